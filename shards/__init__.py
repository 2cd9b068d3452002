"""Image fetch, decode and resize; webdataset shard writer with sidecar manifests; reader for trainers."""
