"""tritonrag: a Triton Inference Server model repository and LLM engine for retrieval-augmented generation."""

__version__ = "0.1.0"
