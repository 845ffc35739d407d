"""Process-group set-up from the environment a Kubernetes Indexed Job pod gets.

MASTER_ADDR / MASTER_PORT / WORLD_SIZE, and RANK or JOB_COMPLETION_INDEX (an Indexed Job sets
only the latter). Rank 0 serves the rendezvous store; other ranks first wait until its port
accepts TCP connections, since the master pod's DNS name can resolve before it listens. Every
wait is bounded by the rendezvous timeout: no replica hangs forever on a missing peer.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cxrjobs.errors import RendezvousTimeout
from cxrjobs.train.rank import int_env, rank_from_env

COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # an epoch's evaluation can keep one rank busy


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None when world_size == 1: no process group at all

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def wait_for_master(addr: str, port: int, rank: int, deadline: float, timeout: float) -> None:
    while True:
        try:
            with socket.create_connection((addr, port), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RendezvousTimeout(
                    f"rank {rank}: no rendezvous: {addr}:{port} did not accept connections within "
                    f"the {timeout:g}s rendezvous timeout ({e}). Is replica 0 running? Raise "
                    "--rendezvous-timeout if pods are slow to start.") from None
            time.sleep(0.2)


def is_loopback(addr: str) -> bool:
    """MASTER_ADDR names this host only (the local backend): 127.0.0.0/8, ::1 or localhost."""
    try:
        infos = socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def master_socket(addr: str, port: int) -> socket.socket | None:
    """For a loopback MASTER_ADDR, a socket listening on that address only: torch's TCPStore
    would otherwise bind every interface, opening the rendezvous store to the network. Elsewhere
    (a pod whose peers connect over the cluster network) None: the store binds as usual."""
    if not is_loopback(addr):
        return None
    family, _, _, _, sockaddr = socket.getaddrinfo(addr, port, proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise RendezvousTimeout(f"rank 0: cannot listen on {addr}:{port} for the rendezvous ({e}); "
                                "is the port in use?") from None
    return sock


def choose_device(rank: int, env=os.environ, gpus: int | None = None) -> tuple[torch.device, str]:
    """(device, backend) of this replica. With GPUs, replica LOCAL_RANK takes GPU LOCAL_RANK mod
    the count, and when a host has at least as many GPUs as replicas (LOCAL_WORLD_SIZE) they talk
    over nccl, one GPU each; more replicas than GPUs share them over gloo (NCCL needs one GPU per
    rank). No GPU: CPU and gloo. CXRJOBS_DIST_BACKEND overrides the backend."""
    gpus = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if gpus is None else gpus
    if gpus:
        local = int_env(env, "LOCAL_RANK", rank % gpus)
        device = torch.device("cuda", local % gpus)
        backend = "nccl" if int_env(env, "LOCAL_WORLD_SIZE", 1) <= gpus else "gloo"
    else:
        device, backend = torch.device("cpu"), "gloo"
    return device, env.get("CXRJOBS_DIST_BACKEND") or backend


def init_distributed(rendezvous_timeout: float = 300.0, env=os.environ) -> DistContext:
    rank, world = rank_from_env(env)
    device, backend = choose_device(rank, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1:
        return DistContext(0, 1, device, None)
    addr = env.get("MASTER_ADDR") or "127.0.0.1"
    port = int_env(env, "MASTER_PORT", 29500)
    deadline = time.monotonic() + rendezvous_timeout
    if rank != 0:
        wait_for_master(addr, port, rank, deadline, rendezvous_timeout)
    remaining = max(1.0, deadline - time.monotonic())
    listen = master_socket(addr, port) if rank == 0 else None
    try:
        store = dist.TCPStore(addr, port, world, is_master=(rank == 0),
                              timeout=timedelta(seconds=remaining), wait_for_workers=True,
                              master_listen_fd=listen.fileno() if listen else None)
    except (RuntimeError, TimeoutError, dist.DistError) as e:
        raise RendezvousTimeout(
            f"rank {rank}: rendezvous at {addr}:{port} for {world} replicas did not complete "
            f"within the {rendezvous_timeout:g}s rendezvous timeout; a replica never started or "
            f"cannot reach the master ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    finally:
        if listen is not None:
            listen.detach()  # the store's server owns the descriptor now (or it closed it)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank, world, device, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
