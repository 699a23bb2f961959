//! The collective algorithms over a [`Ctx`].
//!
//! Determinism: every reduced element is computed by a fixed sequence of operations that
//! depends only on the world size and the buffer length, never on timing. The ring computes
//! each segment on one rank and then copies its bits to the others; the direct exchange has
//! every rank fold all contributions in rank order with the same code. Either way every rank
//! ends with the same bits, and a rerun with the same world size reproduces them.

use std::mem::size_of_val;
use std::ops::Range;

use super::fault::Failure;
use super::link::Ctx;
use crate::ReduceOp;

/// Frames of a pipelined ring or chain carry at most this much data, so the next rank can
/// start forwarding while the rest is still in flight.
pub(super) const CHUNK_BYTES: usize = 1024 * 1024;
/// All-reduces and broadcasts up to this size exchange directly (one round trip) instead of
/// walking the ring (2 (W-1) hops).
pub(super) const SMALL_BYTES: usize = 64 * 1024;

/// Element types that travel as raw bytes.
///
/// # Safety
/// Implementors must be plain numbers: no padding, every bit pattern a valid value.
pub(super) unsafe trait Elem: Copy + Default + 'static {
    fn sum(a: Self, b: Self) -> Self;
    /// Commutative and associative to the bit, so the order of ranks cannot show: NaN if
    /// either is NaN (one canonical NaN), +0 over -0.
    fn max(a: Self, b: Self) -> Self;
}

macro_rules! float_elem {
    ($t:ty) => {
        // SAFETY: a primitive float has no padding and accepts every bit pattern.
        unsafe impl Elem for $t {
            #[inline]
            fn sum(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                if a.is_nan() || b.is_nan() {
                    <$t>::NAN
                } else if a > b {
                    a
                } else if b > a {
                    b
                } else {
                    // Equal: identical bits, or +0 and -0 where the AND clears the sign.
                    <$t>::from_bits(a.to_bits() & b.to_bits())
                }
            }
        }
    };
}
float_elem!(f32);
float_elem!(f64);

// SAFETY: a primitive integer has no padding and accepts every bit pattern.
unsafe impl Elem for i64 {
    #[inline]
    fn sum(a: Self, b: Self) -> Self {
        a.wrapping_add(b)
    }
    #[inline]
    fn max(a: Self, b: Self) -> Self {
        a.max(b)
    }
}

fn bytes<T: Elem>(s: &[T]) -> &[u8] {
    // SAFETY: `T: Elem` is plain data; u8 has no alignment requirement; same memory span.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), size_of_val(s)) }
}

fn bytes_mut<T: Elem>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes`, and any bytes written form valid `T`s.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), size_of_val(s)) }
}

/// `acc[i] = acc[i] (op) x[i]`.
fn reduce<T: Elem>(acc: &mut [T], x: &[T], op: ReduceOp) {
    match op {
        ReduceOp::Sum => acc.iter_mut().zip(x).for_each(|(a, b)| *a = T::sum(*a, *b)),
        ReduceOp::Max => acc.iter_mut().zip(x).for_each(|(a, b)| *a = T::max(*a, *b)),
    }
}

/// Part `k` of `n` items cut into `w` contiguous parts whose sizes differ by at most one.
fn part(n: usize, w: usize, k: usize) -> Range<usize> {
    let at = |k: usize| (k as u128 * n as u128 / w as u128) as usize;
    at(k)..at(k + 1)
}

/// `r` cut into pieces of at most `size`; at least one piece, so an empty range still sends
/// a frame and a disagreement on the operation is still detected.
fn pieces(r: Range<usize>, size: usize) -> impl Iterator<Item = Range<usize>> {
    let count = r.len().div_ceil(size).max(1);
    (0..count).map(move |i| (r.start + i * size).min(r.end)..(r.start + (i + 1) * size).min(r.end))
}

fn others(ctx: &Ctx<'_>) -> impl Iterator<Item = usize> {
    let rank = ctx.rank;
    (0..ctx.world).filter(move |&p| p != rank)
}

pub(super) fn all_reduce<T: Elem>(
    ctx: &mut Ctx<'_>,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<(), Failure> {
    if ctx.world == 1 {
        Ok(())
    } else if size_of_val(buf) <= SMALL_BYTES {
        direct_all_reduce(ctx, buf, op)
    } else {
        ring_all_reduce(ctx, buf, op)
    }
}

/// Everyone sends its buffer to everyone and folds `x_0 op x_1 op ... op x_{W-1}` itself.
fn direct_all_reduce<T: Elem>(
    ctx: &mut Ctx<'_>,
    buf: &mut [T],
    op: ReduceOp,
) -> Result<(), Failure> {
    ctx.heartbeat_to_all();
    for p in others(ctx) {
        ctx.send(p, bytes(buf))?;
    }
    let rank = ctx.rank;
    let mine = if rank == 0 { Vec::new() } else { buf.to_vec() };
    let mut x = vec![T::default(); buf.len()];
    for p in 0..ctx.world {
        if p == 0 {
            if rank != 0 {
                ctx.recv(0, bytes_mut(buf))?;
            }
        } else if p == rank {
            reduce(buf, &mine, op);
        } else {
            ctx.recv(p, bytes_mut(&mut x))?;
            reduce(buf, &x, op);
        }
    }
    Ok(())
}

/// Reduce-scatter then all-gather around the ring `r -> r+1`, each of the `2 (W-1)` steps
/// pipelined in chunks: a chunk received from the predecessor is reduced (or stored) and
/// queued to the successor at once. Segment `s` is reduced in the order `s, s+1, ..., s-1`
/// on rank `s-1` alone, whose result bits the all-gather then copies everywhere.
fn ring_all_reduce<T: Elem>(ctx: &mut Ctx<'_>, buf: &mut [T], op: ReduceOp) -> Result<(), Failure> {
    let (rank, world, n) = (ctx.rank, ctx.world, buf.len());
    let next = (rank + 1) % world;
    let prev = (rank + world - 1) % world;
    let chunk = (CHUNK_BYTES / size_of_val(&buf[0])).max(1);
    ctx.heartbeat_to(&[next]);

    // Step 0 sends this rank's own segment; step t receives segment rank-t-1, which step
    // t+1 sends on.
    for c in pieces(part(n, world, rank), chunk) {
        ctx.send(next, bytes(&buf[c]))?;
    }
    let mut x = vec![T::default(); chunk.min(n)];
    let steps = 2 * (world - 1);
    for t in 0..steps {
        let seg = (rank + 2 * world - 1 - t) % world;
        for c in pieces(part(n, world, seg), chunk) {
            if t < world - 1 {
                let x = &mut x[..c.len()];
                ctx.recv(prev, bytes_mut(x))?;
                reduce(&mut buf[c.clone()], x, op);
            } else {
                ctx.recv(prev, bytes_mut(&mut buf[c.clone()]))?;
            }
            if t + 1 < steps {
                ctx.send(next, bytes(&buf[c]))?;
            }
        }
    }
    Ok(())
}

/// Every rank sends its block straight to every other: as many bytes per rank as a ring
/// all-gather, one round trip instead of `W-1`. Chunks are received round-robin so that no
/// peer's sender sits blocked (towards its write timeout) while the others are drained.
pub(super) fn all_gather(ctx: &mut Ctx<'_>, send: &[u8], recv: &mut [u8]) -> Result<(), Failure> {
    let (rank, s) = (ctx.rank, send.len());
    recv[rank * s..(rank + 1) * s].copy_from_slice(send);
    if ctx.world == 1 {
        return Ok(());
    }
    ctx.heartbeat_to_all();
    for c in pieces(0..s, CHUNK_BYTES) {
        for p in others(ctx) {
            ctx.send(p, &send[c.clone()])?;
        }
    }
    for c in pieces(0..s, CHUNK_BYTES) {
        for p in others(ctx) {
            ctx.recv(p, &mut recv[p * s + c.start..p * s + c.end])?;
        }
    }
    Ok(())
}

/// Small buffers go from the root to everyone directly; large ones down the chain
/// `root -> root+1 -> ...` in chunks, so the root sends the buffer once, not `W-1` times.
/// The root receives nothing, so ranks that disagree on the root are caught by a receiving
/// rank's header check, or at the latest by the next operation's sequence number.
pub(super) fn broadcast(ctx: &mut Ctx<'_>, buf: &mut [u8], root: usize) -> Result<(), Failure> {
    let (rank, world) = (ctx.rank, ctx.world);
    if world == 1 {
        return Ok(());
    }
    if buf.len() <= SMALL_BYTES {
        if rank == root {
            ctx.heartbeat_to_all();
            for p in others(ctx) {
                ctx.send(p, buf)?;
            }
        } else {
            ctx.heartbeat_to(&[]);
            ctx.recv(root, buf)?;
        }
        return Ok(());
    }
    let pos = (rank + world - root) % world;
    let next = (rank + 1) % world;
    let prev = (rank + world - 1) % world;
    let last = pos == world - 1;
    if last {
        ctx.heartbeat_to(&[]);
    } else {
        ctx.heartbeat_to(&[next]);
    }
    for c in pieces(0..buf.len(), CHUNK_BYTES) {
        if pos != 0 {
            ctx.recv(prev, &mut buf[c.clone()])?;
        }
        if !last {
            ctx.send(next, &buf[c])?;
        }
    }
    Ok(())
}

/// An empty frame to and from every peer.
pub(super) fn barrier(ctx: &mut Ctx<'_>) -> Result<(), Failure> {
    if ctx.world == 1 {
        return Ok(());
    }
    ctx.heartbeat_to_all();
    for p in others(ctx) {
        ctx.send(p, &[])?;
    }
    for p in others(ctx) {
        ctx.recv(p, &mut [])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_range_evenly() {
        for n in [0, 1, 7, 10, 1_000_003] {
            for w in 1..=5 {
                let parts: Vec<_> = (0..w).map(|k| part(n, w, k)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[w - 1].end, n);
                for k in 1..w {
                    assert_eq!(parts[k - 1].end, parts[k].start);
                }
                let (lo, hi) = (n / w, n.div_ceil(w));
                assert!(parts.iter().all(|p| p.len() == lo || p.len() == hi));
            }
        }
    }

    #[test]
    fn pieces_cover_and_never_vanish() {
        assert_eq!(pieces(5..5, 4).collect::<Vec<_>>(), vec![5..5]);
        assert_eq!(
            pieces(0..10, 4).collect::<Vec<_>>(),
            vec![0..4, 4..8, 8..10]
        );
        assert_eq!(pieces(3..7, 4).collect::<Vec<_>>(), vec![3..7]);
    }

    #[test]
    fn max_is_order_free_to_the_bit() {
        let vals = [0.0f32, -0.0, 1.0, -1.0, f32::NAN, -f32::NAN, f32::INFINITY];
        for a in vals {
            for b in vals {
                assert_eq!(
                    <f32 as Elem>::max(a, b).to_bits(),
                    <f32 as Elem>::max(b, a).to_bits()
                );
            }
        }
        assert_eq!(<f64 as Elem>::max(-0.0, 0.0).to_bits(), 0.0f64.to_bits());
        assert!(<f64 as Elem>::max(f64::NAN, 1.0).is_nan());
        assert_eq!(<i64 as Elem>::sum(i64::MAX, 1), i64::MIN);
    }
}
