//! The smol driver of the transport core: one `Async<UdpSocket>`, one timer, one
//! [`Endpoint`].
//!
//! Each turn: send every queued transmit, hand out one event if there is one, else wait
//! for a datagram or the endpoint's next deadline, whichever comes first. After a
//! datagram, up to [`IO_LOOP_BOUND`] more already-queued ones are taken without waiting,
//! which amortises wake-ups under load while keeping timers and sends from starving
//! behind a flood.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_io::{Async, Timer};

use crate::transport::wire::MAX_DATAGRAM;
use crate::transport::{Config, Endpoint, Event, PeerKey, PeerPolicy, SendError, Stats};

/// Datagrams handled per turn before outputs are drained and timers checked again: big
/// enough to amortise a wake-up, small enough that a junk flood delays a due timer by
/// well under a millisecond on a Pi.
pub const IO_LOOP_BOUND: usize = 64;

/// Socket buffer size we ask the kernel for, each way. A 1 MiB message is ~880
/// datagrams that leave in one burst; each costs over 2 KiB of kernel buffer, so the
/// default (~200 KiB) would drop most of it before the receiver is scheduled.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Fresh randomness from the OS, for seeding cores and making keys.
pub fn os_random() -> io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(io::Error::other)?;
    Ok(b)
}

fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub struct Driver {
    socket: Async<UdpSocket>,
    endpoint: Endpoint,
    /// One byte longer than the largest valid datagram so oversized ones are seen as such.
    buf: Vec<u8>,
    send_errors: u64,
}

enum Wake {
    Datagram(usize, SocketAddr),
    Timer,
}

impl Driver {
    /// Binds `addr` and starts an endpoint with `secret` as this node's static key.
    pub fn bind(addr: SocketAddr, secret: [u8; 32], cfg: Config) -> io::Result<Driver> {
        let socket = Async::<UdpSocket>::bind(addr)?;
        grow_buffers(socket.get_ref());
        let endpoint = Endpoint::new(cfg, secret, os_random()?, Instant::now(), wall_nanos());
        Ok(Driver {
            socket,
            endpoint,
            buf: vec![0; MAX_DATAGRAM + 1],
            send_errors: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
    }

    pub fn public_key(&self) -> PeerKey {
        self.endpoint.public_key()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    pub fn stats(&self) -> Stats {
        self.endpoint.stats()
    }

    /// Datagrams the kernel refused to send (unreachable routes and the like).
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Queues `data` for `peer`; it leaves on the next `flush` or `next_event`.
    pub fn send(&mut self, peer: PeerKey, data: &[u8]) -> Result<(), SendError> {
        self.endpoint.send(Instant::now(), peer, data)
    }

    /// Writes every queued datagram to the socket. A datagram the kernel refuses is
    /// counted and dropped: the transport is lossy by contract, and the layers above
    /// repeat themselves.
    pub async fn flush(&mut self) -> io::Result<()> {
        while let Some(t) = self.endpoint.poll_transmit() {
            if let Err(e) = self.socket.send_to(&t.data, t.dest).await {
                if is_fatal(&e) {
                    return Err(e);
                }
                self.send_errors += 1;
            }
        }
        Ok(())
    }

    /// Runs the endpoint until it has an event for the caller.
    pub async fn next_event(&mut self, policy: &mut dyn PeerPolicy) -> io::Result<Event> {
        loop {
            self.flush().await?;
            if let Some(e) = self.endpoint.poll_event() {
                return Ok(e);
            }
            let deadline = self.endpoint.poll_timeout();
            let recv = async {
                let (n, from) = self.socket.recv_from(&mut self.buf).await?;
                Ok::<_, io::Error>(Wake::Datagram(n, from))
            };
            let timer = async {
                match deadline {
                    Some(at) => Timer::at(at).await,
                    None => std::future::pending().await,
                };
                Ok(Wake::Timer)
            };
            match smol::future::or(recv, timer).await {
                Ok(Wake::Datagram(n, from)) => {
                    self.endpoint
                        .handle_datagram(Instant::now(), from, &mut self.buf[..n], policy);
                    self.drain_ready(policy)?;
                }
                Ok(Wake::Timer) => self.endpoint.handle_timeout(Instant::now()),
                Err(e) if is_fatal(&e) => return Err(e),
                Err(_) => {} // e.g. an ICMP error surfaced on the socket: nothing to do
            }
        }
    }

    /// One turn of a bigger loop: waits for a datagram, the endpoint's next deadline,
    /// the caller's `deadline`, or `other`, and handles the first two itself. Returns
    /// `other`'s output if it finished. Events are left in the endpoint for the caller.
    pub async fn turn<T>(
        &mut self,
        policy: &mut dyn PeerPolicy,
        deadline: Option<Instant>,
        other: impl std::future::Future<Output = T>,
    ) -> io::Result<Option<T>> {
        self.flush().await?;
        let at = match (self.endpoint.poll_timeout(), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        enum Woke<T> {
            Datagram(io::Result<(usize, SocketAddr)>),
            Timer,
            Other(T),
        }
        let recv = async { Woke::Datagram(self.socket.recv_from(&mut self.buf).await) };
        let timer = async {
            match at {
                Some(at) => Timer::at(at).await,
                None => std::future::pending().await,
            };
            Woke::Timer
        };
        let other = async { Woke::Other(other.await) };
        match smol::future::or(other, smol::future::or(recv, timer)).await {
            Woke::Datagram(Ok((n, from))) => {
                self.endpoint
                    .handle_datagram(Instant::now(), from, &mut self.buf[..n], policy);
                self.drain_ready(policy)?;
            }
            Woke::Datagram(Err(e)) if is_fatal(&e) => return Err(e),
            Woke::Datagram(Err(_)) => {}
            Woke::Timer => self.endpoint.handle_timeout(Instant::now()),
            Woke::Other(t) => return Ok(Some(t)),
        }
        self.flush().await?;
        Ok(None)
    }

    /// Takes datagrams that are already waiting, without blocking, up to the bound.
    fn drain_ready(&mut self, policy: &mut dyn PeerPolicy) -> io::Result<()> {
        for _ in 0..IO_LOOP_BOUND {
            match self.socket.get_ref().recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    self.endpoint
                        .handle_datagram(Instant::now(), from, &mut self.buf[..n], policy);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if is_fatal(&e) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }
}

/// Raises the socket buffers: past `net.core.rmem_max` when we are root (the daemon
/// is), else up to it. Failure only costs burst tolerance, so it is not an error.
fn grow_buffers(socket: &UdpSocket) {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER_BYTES).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER_BYTES);
    }
    if sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER_BYTES).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER_BYTES);
    }
}

/// Errors that mean the socket itself is broken, as opposed to one datagram failing.
fn is_fatal(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
            | io::ErrorKind::PermissionDenied
    ) && e.raw_os_error() != Some(rustix::io::Errno::MSGSIZE.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn two_drivers_exchange_over_loopback() {
        smol::block_on(async {
            let mut a =
                Driver::bind("127.0.0.1:0".parse().unwrap(), [1; 32], Config::default()).unwrap();
            let mut b =
                Driver::bind("127.0.0.1:0".parse().unwrap(), [2; 32], Config::default()).unwrap();
            let (ka, kb) = (a.public_key(), b.public_key());
            let b_addr = b.local_addr().unwrap();
            a.endpoint_mut().set_peer(kb, b_addr, [0; 32]).unwrap();
            let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            a.send(kb, &big).unwrap();
            let mut admit = |k: &PeerKey, _: SocketAddr| (*k == ka).then_some([0u8; 32]);
            let mut deny = |_: &PeerKey, _: SocketAddr| None;
            let a_task = async {
                loop {
                    a.next_event(&mut deny).await.unwrap();
                }
            };
            let b_task = async {
                loop {
                    if let Event::Message { peer, data } = b.next_event(&mut admit).await.unwrap() {
                        return (peer, data);
                    }
                }
            };
            let timeout = async {
                Timer::after(Duration::from_secs(10)).await;
                panic!("no message within 10 s");
            };
            let (peer, data) = smol::future::or(smol::future::or(b_task, a_task), timeout).await;
            assert_eq!(peer, ka);
            assert!(data == big);
        });
    }
}
