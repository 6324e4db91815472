"""eve-ms: MindSpore implementation of Eve (Efficient VLMs with Elastic Visual Experts, AAAI 2025)."""
from setuptools import find_packages, setup

setup(
    name="eve-ms",
    version="0.1.0",
    description="Eve vision-language models with elastic visual experts, in MindSpore",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["eve_ms", "eve_ms.*"]),
    package_data={"eve_ms": ["ops/kernels/*.cc", "ops/kernels/*.cu", "ops/kernels/*.h", "serve/static/*.html", "plan/*.yaml"]},
    include_package_data=True,
    install_requires=[
        # The working pair on CPU and Ascend; mindformers brings numpy<2, transformers and tokenizers.
        "mindspore==2.9.0",
        "mindformers==1.9.0",
        "numpy<2",
        "pillow",
        "pyyaml",
        "safetensors",
        "ml-dtypes==0.5.4",  # numpy's bfloat16 for safetensors' numpy API (0.6+ needs numpy 2)
        "tensorboardX==2.6.5",  # TensorBoard event files of training runs (also a mindformers dependency)
        "tqdm",
        "matplotlib",
        # XSum's ROUGE: the package OpenCompass's RougeEvaluator scores with
        "rouge-score==0.1.2",
        # `eve-ms serve`: the ASGI framework and server
        "fastapi==0.142.2",
        "uvicorn==0.54.0",
    ],
    extras_require={
        # torch is a reference implementation for parity tests and benchmarks only; tensorboard's event reader
        # checks the event files a training run writes. Test tools are pinned exactly (and everything else in
        # constraints.txt) so a new release cannot turn CI red.
        # openai (the official client) and selenium (driving Debian's chromium) test `eve-ms serve`; psutil
        # (also MindSpore's) finds the demo's worker processes; pytest-xdist runs the suite in two processes
        # (pytest.ini).
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.17", "torch==2.13.0",
                 "tensorboard==2.21.0", "openai==2.54.0", "selenium==4.50.0", "psutil==7.2.2"],
    },
    entry_points={"console_scripts": ["eve-ms=eve_ms.cli:main"]},
)
