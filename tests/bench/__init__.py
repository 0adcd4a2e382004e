"""`make bench`: overhead, throughput and CPU of apiinone against the direct upstream, LiteLLM and Portkey."""
