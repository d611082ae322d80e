//! testkit: the harness every vipwire integration test and benchmark uses. Real parts only:
//! a real etcd + kube-apiserver ([`kube`]), real network namespaces ([`netlab`]), real FRR,
//! BIRD and GoBGP ([`peer`]), the real BPF object in the real kernel ([`bpf`]).

pub mod agent;
pub mod bench;
pub mod bpf;
pub mod fuzz;
pub mod kube;
pub mod l4lab;
pub mod l4packets;
pub mod l4tables;
pub mod netlab;
pub mod packets;
pub mod peer;
pub mod probe;
pub mod process;
pub mod synthetic;
pub mod tools;

pub use kube::KubeApi;
pub use netlab::{NetLab, Netns};
pub use peer::{Peer, PeerConfig, PeerKind};
