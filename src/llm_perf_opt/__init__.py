"""llm-perf-opt: per-stage MFU of DeepSeek-OCR inference from Nsight Systems traces.

Data flows one way: read trace (`trace`) → attribute GPU ops to NVTX ranges (`attribution`) →
FLOPs (`flops`) → MFU (`mfu`) → report (`report`). Only `llm_perf_opt.runner` imports torch.
"""

__version__ = "0.1.0"
