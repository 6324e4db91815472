"""The demo's stage-3 runs and their folder names, read by the pipeline that trains them and the report that
reads their logs (one home: neither imports the other for it)."""

VARIANTS = ("img_gbpr", "gbpr", "random", "moe")  # stage-3 variants: the method, its ablations, the MoE baseline
VARIANT_RUN = {"img_gbpr": "stage3", "gbpr": "stage3_gbpr", "random": "stage3_random", "moe": "stage3_moe"}


def run_name(variant: str, seed: int) -> str:
    """Output folder of a stage-3 variant's run: stage3[_random|_gbpr|_moe][_seedN]."""
    return VARIANT_RUN[variant] + (f"_seed{seed}" if seed else "")
