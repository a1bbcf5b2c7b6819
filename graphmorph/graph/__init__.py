"""The graph engine: capture a model as an fx graph with shapes (`capture`, `shapes`), read its
structure (`analysis`: stages, blocks, residual branches; `channels`: coupled channel groups through
the handlers of `channel_ops`), know ops (`registry`: channel handlers, layer surgery and facts in
one place), cut and widen channels and resize layers (`channel_surgery`, `layers`), verify
a rewrite (`verify`), count FLOPs (`flops`), export ONNX (`export`), and keep the rewrite history
(`history`). It imports nothing above it: not the models, the run infrastructure, the rewrites."""
