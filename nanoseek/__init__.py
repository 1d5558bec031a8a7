"""nanoseek: DeepSeek-V3 / R1 in miniature. The checkpoint functions load lazily, so importing the package (and
`nanoseek --help`) does not import torch."""

__all__ = ["load_checkpoint", "save_checkpoint"]


def __getattr__(name: str):
    if name in __all__:
        from nanoseek import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'nanoseek' has no attribute {name!r}")
