"""Models: loading and its security policy, the embedded worlds, a saved model's record and card."""
