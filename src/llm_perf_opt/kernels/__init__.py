"""What the GPU runs: kernel names sorted into categories, each category's and each kernel's
share of a stage's time, and short names a person can read.

- `categories`: the rule table that sorts a kernel name into its category.
- `shares`: top kernels and time per category of a set of kernel entries; launch kinds.
- `names`: short kernel names (templates and argument lists folded).
"""

__all__ = ["categories", "names", "shares"]
