//! Data parallelism across processes: the process group and its ring
//! collectives ([`group`]), the launcher that starts the ranks ([`launch`]).
//! The trainer talks only to [`group::ProcessGroup`]'s four collectives, the
//! seam where NCCL (through cudarc) would take the TCP ring's place.

pub mod group;
pub mod launch;
pub mod tensor;
