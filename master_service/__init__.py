"""The picluster master: listens to the cluster, keeps its state and history, serves them."""
