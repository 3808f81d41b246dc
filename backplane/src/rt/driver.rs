//! The mesh thread: moves bytes and time between quinn and the sans-IO [`Mesh`], and does
//! nothing else. Every decision is the mesh's.

use super::metrics::Metrics;
use super::{now_unix_us, Budgets, Command, Settings, Shared, Wake};
use crate::class::StreamKind;
use crate::config::MeshConfig;
use crate::frame::{Control, StreamError, StreamHeader};
use crate::ids::{Boot, NodeId};
use crate::mesh::{ConnId, DataItem, DataStream, Effect, Event, Mesh};
use crate::queue::Depth;
use crate::tls;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// What the connection tasks tell the loop. `Header`: every stream's header, the caller's
/// streams' too, and `heard` told once the mesh has it. `Closed::in_use`: the peer closed the
/// connection with [`crate::mesh::CloseCode::InUse`].
enum Input {
    Dialed { conn: ConnId, node: NodeId, connection: quinn::Connection },
    DialFailed { conn: ConnId },
    Accepted { node: NodeId, connection: quinn::Connection },
    Header { conn: ConnId, header: StreamHeader, heard: oneshot::Sender<()> },
    Control { conn: ConnId, control: Control },
    StreamError { conn: ConnId, error: StreamError },
    Written { conn: ConnId, stream: StreamKind },
    Closed { conn: ConnId, in_use: bool },
}

/// Inputs from connection tasks waiting at once; a task waits when it is full.
const INPUTS_MAX: usize = 1024;
/// The most bytes one read of a stream takes.
const READ_BYTES_MAX: usize = 64 * 1024;

struct Live {
    connection: quinn::Connection,
    node: NodeId,
    writers: HashMap<StreamKind, mpsc::Sender<Vec<Bytes>>>,
}

pub(super) struct Driver {
    mesh: Mesh,
    started: Instant,
    endpoint_socket: Option<std::net::UdpSocket>,
    reset_key: [u8; 32],
    tls: tls::MeshTls,
    addrs: BTreeMap<NodeId, SocketAddr>,
    conns: HashMap<ConnId, Live>,
    inbox: crossbeam_channel::Sender<Event>,
    budgets: Arc<Budgets>,
    wake: Wake,
    commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Metrics>,
    shared: Option<Arc<Shared>>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        settings: Settings,
        boot: Boot,
        socket: std::net::UdpSocket,
        reset_key: &[u8; 32],
        inbox: crossbeam_channel::Sender<Event>,
        budgets: Arc<Budgets>,
        wake: Wake,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> anyhow::Result<Driver> {
        let peers: Vec<NodeId> = settings.peers.iter().map(|(n, _)| *n).collect();
        let seed = boot.0 ^ (u64::from(settings.node.0) << 48);
        let mesh = Mesh::new(settings.config, settings.node, boot, &peers, 0, seed);
        let metrics = Arc::new(Metrics::new(mesh.counters(), mesh.depths()));
        Ok(Driver {
            mesh,
            started: Instant::now(),
            endpoint_socket: Some(socket),
            reset_key: *reset_key,
            tls: settings.tls,
            addrs: settings.peers.into_iter().collect(),
            conns: HashMap::new(),
            inbox,
            budgets,
            wake,
            commands,
            metrics,
            shared: None,
        })
    }

    pub(super) fn config(&self) -> &MeshConfig {
        self.mesh.config()
    }

    pub(super) fn me(&self) -> NodeId {
        self.mesh.me()
    }

    pub(super) fn depths(&self) -> BTreeMap<NodeId, Arc<Depth>> {
        self.mesh.depths()
    }

    pub(super) fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(super) fn set_shared(&mut self, shared: Arc<Shared>) {
        self.shared = Some(shared);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn run(mut self) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        runtime.block_on(async move {
            if let Err(error) = self.serve().await {
                tracing::error!(%error, "the backplane stopped");
            }
        });
    }

    fn transport(&self) -> anyhow::Result<Arc<quinn::TransportConfig>> {
        let config = self.mesh.config();
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(Duration::from_millis(config.idle_timeout_ms).try_into()?));
        transport.keep_alive_interval(Some(Duration::from_millis(config.keep_alive_ms)));
        transport.max_concurrent_bidi_streams(0u32.into());
        // Each side opens control, bulk and the lanes once per connection; a few spare.
        transport.max_concurrent_uni_streams((u32::from(config.lanes) + 8).into());
        // Finite windows, sized for the queues: one stream may have a whole frame of its
        // class in flight, the connection about one full queue of every class.
        let stream_window = config.frame_bytes_max.iter().max().copied().unwrap_or(1 << 20).max(1 << 20);
        let connection_window: usize = config.queue_bytes_max.iter().sum();
        transport.stream_receive_window(quinn::VarInt::from_u64(stream_window as u64)?);
        transport.receive_window(quinn::VarInt::from_u64(connection_window as u64)?);
        transport.send_window(connection_window as u64);
        // Nodes share a LAN: start from a LAN round trip, not quinn's 333 ms guess.
        transport.initial_rtt(Duration::from_millis(10));
        Ok(Arc::new(transport))
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let transport = self.transport()?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(
            self.tls.server.clone(),
        )?));
        server.transport_config(transport.clone());
        // Nodes do not move: a packet from another address is not a migration to honour.
        server.migration(false);
        let mut client = quinn::ClientConfig::new(Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(
            self.tls.client.clone(),
        )?));
        client.transport_config(transport);
        let reset = Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.reset_key));
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::new(reset),
            Some(server),
            self.endpoint_socket.take().expect("socket"),
            Arc::new(quinn::TokioRuntime),
        )?;
        let (inputs, mut inputs_rx) = mpsc::channel::<Input>(INPUTS_MAX);
        let mut rtt_tick = tokio::time::interval(Duration::from_secs(1));
        let mut stopping = false;
        loop {
            self.apply(&endpoint, &client, &inputs);
            if stopping {
                break;
            }
            let deadline = self.mesh.poll_timeout().map(|ms| self.started + Duration::from_millis(ms));
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = self.commands.recv() => {
                    let mut next = command;
                    // Take everything already waiting: one wakeup, many frames.
                    loop {
                        match next {
                            Some(Command::Send { node, class, lane_key, item }) => {
                                self.mesh.enqueue_reserved(node, class, lane_key, item)
                            }
                            Some(Command::Stop) | None => {
                                stopping = true;
                                self.mesh.shutdown();
                                break;
                            }
                        }
                        match self.commands.try_recv() {
                            Ok(command) => next = Some(command),
                            Err(_) => break,
                        }
                    }
                }
                Some(input) = inputs_rx.recv() => self.input(input, &inputs),
                incoming = endpoint.accept() => {
                    if let Some(incoming) = incoming {
                        self.accept(incoming, &inputs);
                    }
                }
                _ = rtt_tick.tick() => self.sample_rtt(),
                _ = sleep => {
                    let now = self.now_ms();
                    self.mesh.handle_timeout(now);
                }
            }
        }
        endpoint.close(quinn::VarInt::from_u32(crate::mesh::CloseCode::Shutdown as u32), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok(())
    }

    /// Carries out the mesh's effects and delivers its events.
    fn apply(&mut self, endpoint: &quinn::Endpoint, client: &quinn::ClientConfig, inputs: &mpsc::Sender<Input>) {
        let mut delivered = false;
        loop {
            if let Some(effect) = self.mesh.poll_effect() {
                match effect {
                    Effect::Dial { conn, node } => self.dial(endpoint, client, conn, node, inputs),
                    Effect::Close { conn, code } => {
                        if let Some(live) = self.conns.remove(&conn) {
                            live.connection.close(quinn::VarInt::from_u32(code as u32), format!("{code:?}").as_bytes());
                        }
                    }
                    Effect::Ready { conn, stream } => self.feed(conn, stream, inputs),
                }
                continue;
            }
            if let Some(event) = self.mesh.poll_event() {
                match &event {
                    Event::Up { .. } | Event::Down { .. } => self.publish_live(),
                    Event::Frame(frame) => self.metrics.record_lag(frame.stamp, now_unix_us()),
                    _ => {}
                }
                let _ = self.inbox.send(event);
                delivered = true;
                continue;
            }
            break;
        }
        if delivered {
            (self.wake)();
        }
    }

    fn publish_live(&self) {
        let live = self.mesh.live();
        self.metrics.peers_up.store(live.len() as u64, Ordering::Relaxed);
        if let Some(shared) = &self.shared {
            *shared.live.lock().expect("live view") = live;
        }
    }

    fn sample_rtt(&self) {
        for (node, rtt) in &self.metrics.rtt_us {
            let value = if self.mesh.is_connected(*node) {
                self.conns
                    .values()
                    .find(|l| l.node == *node)
                    .map(|l| l.connection.rtt().as_micros() as u64)
                    .unwrap_or(0)
            } else {
                0
            };
            rtt.store(value, Ordering::Relaxed);
        }
    }

    fn dial(
        &self,
        endpoint: &quinn::Endpoint,
        client: &quinn::ClientConfig,
        conn: ConnId,
        node: NodeId,
        inputs: &mpsc::Sender<Input>,
    ) {
        let inputs = inputs.clone();
        let addr = self.addrs[&node];
        let metrics = self.metrics.clone();
        let connecting = endpoint.connect_with(client.clone(), addr, &tls::node_name(node));
        tokio::spawn(async move {
            let result = match connecting {
                Ok(connecting) => connecting.await,
                Err(error) => {
                    tracing::warn!(%node, %error, "cannot dial");
                    let _ = inputs.send(Input::DialFailed { conn }).await;
                    return;
                }
            };
            match result {
                Ok(connection) => {
                    let _ = inputs.send(Input::Dialed { conn, node, connection }).await;
                }
                Err(error) => {
                    if is_tls_refusal(&error) {
                        metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%node, %error, "refused in the TLS handshake");
                    } else {
                        tracing::debug!(%node, %error, "dial failed");
                    }
                    let _ = inputs.send(Input::DialFailed { conn }).await;
                }
            }
        });
    }

    fn accept(&self, incoming: quinn::Incoming, inputs: &mpsc::Sender<Input>) {
        let inputs = inputs.clone();
        let metrics = self.metrics.clone();
        let candidates: Vec<NodeId> = self.addrs.keys().copied().collect();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, %error, "refused a peer in the handshake");
                    return;
                }
            };
            let node = connection
                .peer_identity()
                .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
                .and_then(|chain| chain.first().and_then(|cert| tls::node_of(cert, candidates.iter().copied())));
            match node {
                Some(node) => {
                    let _ = inputs.send(Input::Accepted { node, connection }).await;
                }
                None => {
                    metrics.tls_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%remote, "refused a peer whose certificate names no configured node");
                    connection.close(quinn::VarInt::from_u32(crate::mesh::CloseCode::Refused as u32), b"not a peer");
                }
            }
        });
    }

    fn input(&mut self, input: Input, inputs: &mpsc::Sender<Input>) {
        let now = self.now_ms();
        match input {
            Input::Dialed { conn, node, connection } => {
                self.track(conn, node, connection, inputs);
                self.mesh.handle_dialed(now, conn);
            }
            Input::DialFailed { conn } => self.mesh.handle_closed(now, conn),
            Input::Accepted { node, connection } => match self.mesh.handle_accepted(now, node) {
                Some(conn) => self.track(conn, node, connection, inputs),
                None => {
                    connection.close(quinn::VarInt::from_u32(crate::mesh::CloseCode::Refused as u32), b"not a peer")
                }
            },
            Input::Header { conn, header, heard } => {
                self.mesh.handle_header(now, conn, header);
                let _ = heard.send(());
            }
            Input::Control { conn, control } => self.mesh.handle_control(now, conn, control),
            Input::StreamError { conn, error } => {
                tracing::warn!(%conn, %error, "a peer broke the stream format");
                self.mesh.handle_stream_error(now, conn, &error)
            }
            Input::Written { conn, stream } => {
                self.mesh.handle_written(conn, stream);
                self.feed(conn, stream, inputs);
            }
            Input::Closed { conn, in_use } => {
                self.conns.remove(&conn);
                if in_use {
                    self.mesh.handle_refused_in_use(now, conn);
                } else {
                    self.mesh.handle_closed(now, conn);
                }
            }
        }
    }

    /// Hands the stream's next batch to its writer, if the mesh has one.
    fn feed(&mut self, conn: ConnId, stream: StreamKind, inputs: &mpsc::Sender<Input>) {
        let Some(live) = self.conns.get_mut(&conn) else { return };
        let Some(batch) = self.mesh.take_batch(conn, stream) else { return };
        let writer = live.writers.entry(stream).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(write_stream(live.connection.clone(), conn, stream, rx, inputs.clone()));
            tx
        });
        // The mesh hands out one batch per stream until it hears it was written, so the
        // writer's one slot is free.
        let _ = writer.try_send(batch);
    }

    /// Starts the tasks that read a connection's streams and watch for its end.
    fn track(&mut self, conn: ConnId, node: NodeId, connection: quinn::Connection, inputs: &mpsc::Sender<Input>) {
        self.conns.insert(conn, Live { connection: connection.clone(), node, writers: HashMap::new() });
        let inputs = inputs.clone();
        let config = self.mesh.config().clone();
        let inbox = self.inbox.clone();
        let budgets = self.budgets.clone();
        let wake = self.wake.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let ended = loop {
                let recv = match connection.accept_uni().await {
                    Ok(recv) => recv,
                    Err(ended) => break ended,
                };
                let reader = Reader {
                    conn,
                    stream: DataStream::new(&config, node),
                    inputs: inputs.clone(),
                    inbox: inbox.clone(),
                    budgets: budgets.clone(),
                    wake: wake.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(reader.run(recv));
            };
            let in_use = matches!(&ended, quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == quinn::VarInt::from_u32(crate::mesh::CloseCode::InUse as u32));
            let _ = inputs.send(Input::Closed { conn, in_use }).await;
        });
    }
}

/// A handshake that failed on a certificate, ours or the peer's: QUIC carries TLS alerts as
/// the transport error codes 0x100–0x1ff ("crypto errors", RFC 9000 §20.1).
fn is_tls_refusal(error: &quinn::ConnectionError) -> bool {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => u64::from(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        _ => return false,
    };
    (0x100..0x200).contains(&code)
}

async fn write_stream(
    connection: quinn::Connection,
    conn: ConnId,
    stream: StreamKind,
    mut batches: mpsc::Receiver<Vec<Bytes>>,
    inputs: mpsc::Sender<Input>,
) {
    let Ok(mut send) = connection.open_uni().await else { return };
    let _ = send.set_priority(stream.priority());
    while let Some(mut batch) = batches.recv().await {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        if inputs.send(Input::Written { conn, stream }).await.is_err() {
            return;
        }
    }
}

/// Where a reader's bytes come from: a QUIC receive stream, or a test's chunks.
trait Chunks {
    /// The next chunk; `None` once the stream ended or failed.
    async fn next_chunk(&mut self) -> Option<Bytes>;
}

impl Chunks for quinn::RecvStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.read_chunk(READ_BYTES_MAX, true).await {
            Ok(Some(chunk)) => Some(chunk.bytes),
            Ok(None) | Err(_) => None,
        }
    }
}

struct Reader {
    conn: ConnId,
    stream: DataStream,
    inputs: mpsc::Sender<Input>,
    inbox: crossbeam_channel::Sender<Event>,
    budgets: Arc<Budgets>,
    wake: Wake,
    metrics: Arc<Metrics>,
}

impl Reader {
    async fn run(mut self, mut recv: impl Chunks) {
        loop {
            let Some(chunk) = recv.next_chunk().await else { return };
            self.stream.push(&chunk);
            let mut arrived = false;
            loop {
                match self.stream.next_item() {
                    Ok(None) => break,
                    // No frame of a stream reaches the node before the mesh has read the run
                    // its header names. A new run's first frames race its control header:
                    // were an answer to one of them queued while the mesh still knew only
                    // the earlier run, learning of the restart would drop it as the earlier
                    // run's (`switchboard-sim` found the asker waiting on it for good).
                    Ok(Some(DataItem::Header(header))) => {
                        let (heard, taken) = oneshot::channel();
                        let _ = self.inputs.send(Input::Header { conn: self.conn, header, heard }).await;
                        let _ = taken.await;
                    }
                    Ok(Some(DataItem::Control(control))) => {
                        if let Control::App { frame, .. } = &control {
                            self.reserve(crate::class::Class::Control, frame.len()).await;
                        }
                        let _ = self.inputs.send(Input::Control { conn: self.conn, control }).await;
                    }
                    Ok(Some(DataItem::Frame(frame))) => {
                        let class = frame.class;
                        self.reserve(class, frame.frame.len()).await;
                        let counters = &self.metrics.counters;
                        counters.frames_in[class.index()].fetch_add(1, Ordering::Relaxed);
                        counters.bytes_in[class.index()].fetch_add(frame.frame.len() as u64, Ordering::Relaxed);
                        self.metrics.record_lag(frame.stamp, now_unix_us());
                        let _ = self.inbox.send(Event::Frame(frame));
                        arrived = true;
                    }
                    Err(error) => {
                        let _ = self.inputs.send(Input::StreamError { conn: self.conn, error }).await;
                        return;
                    }
                }
            }
            if arrived {
                (self.wake)();
            }
        }
    }

    /// Waits until the inbox has room for `len` more bytes of `class`: while it has not, this
    /// stream is not read, and QUIC's flow control holds its sender.
    async fn reserve(&self, class: crate::class::Class, len: usize) {
        if let Ok(permit) = self.budgets.classes[class.index()].acquire_many(Budgets::permits(len)).await {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::Class;
    use bytes::BytesMut;

    /// A test's stream: the chunks it is handed, in order.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl Chunks for Fed {
        async fn next_chunk(&mut self) -> Option<Bytes> {
            self.0.recv().await
        }
    }

    /// A new run's first frames race its control header: a frame of a lane must not reach
    /// the node before the mesh has taken in that lane's header, with the run it names (else
    /// an answer queued meanwhile for the earlier run is dropped when the mesh learns of the
    /// restart: `switchboard-sim` found the asker waiting on it for good).
    #[test]
    fn a_lane_frame_waits_until_the_mesh_has_taken_its_streams_header() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let config = MeshConfig::default();
            let peer = NodeId(2);
            let (inputs, mut inputs_rx) = mpsc::channel(8);
            let (inbox, inbox_rx) = crossbeam_channel::unbounded();
            let budgets = Arc::new(Budgets {
                classes: Class::ALL.map(|c| tokio::sync::Semaphore::new(config.inbox_bytes_max(c))),
            });
            let metrics = Arc::new(Metrics::new(Arc::default(), BTreeMap::new()));
            let reader = Reader {
                conn: 7,
                stream: DataStream::new(&config, peer),
                inputs,
                inbox,
                budgets,
                wake: Arc::new(|| {}),
                metrics,
            };
            let (feed, fed) = mpsc::unbounded_channel();
            let mut bytes = BytesMut::new();
            let header = StreamHeader { kind: StreamKind::Lane(0), node: peer, boot: Boot(2) };
            header.encode(&mut bytes);
            bytes.extend_from_slice(&crate::frame::data_envelope(1, 5));
            bytes.extend_from_slice(b"first");
            feed.send(bytes.freeze()).unwrap();
            tokio::spawn(reader.run(Fed(fed)));

            let heard = match tokio::time::timeout(Duration::from_secs(10), inputs_rx.recv()).await {
                Ok(Some(Input::Header { conn: 7, header: h, heard })) if h == header => heard,
                Ok(_) => panic!("something other than the lane's header reached the mesh first"),
                Err(_) => panic!("the lane's header never reached the mesh"),
            };
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            assert!(inbox_rx.try_recv().is_err(), "a frame reached the node before the mesh took its header");
            heard.send(()).unwrap();
            let arrived = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Ok(event) = inbox_rx.try_recv() {
                        return event;
                    }
                    tokio::task::yield_now().await;
                }
            });
            match arrived.await {
                Ok(Event::Frame(f)) => assert_eq!(&f.frame[..], b"first"),
                other => panic!("the frame did not follow its header: {other:?}"),
            }
        });
    }
}
