# pytester grades mutants and variants inside the (already warm) test process.
pytest_plugins = ["pytester"]

# pytester removes the modules a nested run imported when the run ends. torch imports
# torch._dynamo lazily (on some meta-device paths, for one), and importing it a second
# time registers its torch operators twice, which torch refuses. Imported here, up
# front, it is kept across runs.
import torch._dynamo  # noqa: E402, F401

# The executor machinery too: its zygote (a warm process forking one executor per grading)
# belongs to this module's client, which must outlive each nested run.
import kata.judge  # noqa: E402, F401
import kata.zygote  # noqa: E402, F401
