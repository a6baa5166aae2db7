"""fnet_tf: FactorizeNet and efficient CNNs that run fully in INT8 with the LiteRT interpreter."""
from setuptools import find_packages, setup

setup(
    name="fnet_tf",
    version="0.1.0",
    description="FactorizeNet model zoo: progressive depth factorization, QAT and INT8 TFLite "
                "export for edge CPUs",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    # The zoo travels inside the package: the checkout's models/ (written by tools/release.py,
    # browsable in the repository) becomes fnet_tf/released/ in a wheel; fnet_tf.zoo finds it.
    packages=find_packages(include=["fnet_tf", "fnet_tf.*"]) + ["fnet_tf.released"],
    package_dir={"fnet_tf.released": "models"},
    package_data={"fnet_tf.released": ["*/*"], "fnet_tf.analysis": ["*.json"]},
    entry_points={"console_scripts": [
        "fnet-train=fnet_tf.train:console",
        "fnet-export=fnet_tf.to_tflite:console",
        "fnet-analyze=fnet_tf.analyze:console",
        "fnet-sweep=fnet_tf.sweep:console",
        "fnet-zoo=fnet_tf.zoo:console",
        "fnet-run=fnet_tf.device.run_tflite:main",
        "fnet-regroup=fnet_tf.device.regroup:main",
    ]},
    python_requires=">=3.10,<3.14",
    # Versions seen working together (see BUILD_NOTES.md). tf-keras pins the full
    # `tensorflow` wheel, so tensorflow-cpu alone does not satisfy it.
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-model-optimization>=0.8.1,<0.9",
        "tensorflow-datasets>=4.9",
        "ai-edge-litert>=2.3,<2.4",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "tensorboard>=2.20",
        "absl-py>=1.4",
        "Pillow>=10",
    ],
    # transfer: benchmarks/transfer.py's images (scikit-learn's bundled handwritten digits);
    # ray: fnet-sweep/fnet-tune --executor ray (tests/test_executors.py runs it on two nodes);
    # search: fnet-tune --search tpe (Optuna's TPE sampler)
    extras_require={"test": ["pytest>=8", "ray>=2.40", "optuna>=3.6"],
                    "transfer": ["scikit-learn>=1.3"], "ray": ["ray>=2.40"],
                    "search": ["optuna>=3.6"]},
)
