"""`python -m hf_embed.parameters`: what factorization saves at GPT-2's size (V=50257, d=768), as a markdown table."""

from .embeddings import parameter_table

if __name__ == "__main__":
    print(parameter_table())
