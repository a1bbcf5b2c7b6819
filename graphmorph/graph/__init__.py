"""The graph engine: capture a model as an fx graph with shapes (`capture`, `shapes`), read its
structure (`analysis`: stages, blocks, residual branches; `channels`: coupled channel groups through
the channel-op registry `channel_ops`), cut and resize layers (`channel_surgery`, `layers`), verify
a rewrite (`verify`), count FLOPs (`flops`), export ONNX (`export`), and keep the rewrite history
(`history`). It imports nothing above it: not the models, the run infrastructure, the rewrites."""
