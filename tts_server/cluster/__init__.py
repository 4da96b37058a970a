"""Scale-out on one machine: a shared redis-server, N instances and nginx, in one command.

`python -m tts_server.cluster --instances 3` (or `./run.sh cluster --instances 3`); the
nginx config is generated here for the launcher and for deploy/nginx/ alike
(docs/cluster.md).
"""

from .cluster import Cluster, ClusterError, ClusterOptions, Instance
from .nginx import NginxProcess, Site, find_nginx, render_main, render_site
from .redis import SharedRedis

__all__ = ["Cluster", "ClusterError", "ClusterOptions", "Instance", "NginxProcess",
           "SharedRedis", "Site", "find_nginx", "render_main", "render_site"]
