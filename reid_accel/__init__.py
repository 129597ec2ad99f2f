"""reid-accel: domain-adaptive person re-identification on the Hugging Face stack."""

__version__ = "0.1.0"
