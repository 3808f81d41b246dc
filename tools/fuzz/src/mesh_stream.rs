//! What a peer node sends on a mesh stream: the stream reader, the control frames, SWIM's
//! messages, and the cluster's requests, answers and deliveries.
//!
//! The reader yields the same items however the bytes are split and never a frame over its
//! class's limit; a cluster frame that decodes encodes back into one that decodes the same;
//! SWIM takes any bytes (a rejected message is counted, never a panic, and the member list
//! keeps holding this node).

use switchboard_backplane::frame::{split_data, Control, Item, StreamError, StreamReader};
use switchboard_backplane::membership::{Member, Swim};
use switchboard_backplane::{Boot, Class, MeshConfig, NodeId};
use switchboard_edge::cluster::wire;

const LANES: u16 = 4;
const FRAME_BYTES_MAX: [usize; 3] = [512, 2048, 4096];

fn read_all(chunks: &[&[u8]]) -> (Vec<Item>, Option<StreamError>) {
    let mut reader = StreamReader::new(LANES, FRAME_BYTES_MAX);
    let mut items = Vec::new();
    for chunk in chunks {
        reader.push(chunk);
        loop {
            match reader.next_item() {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
    }
    (items, None)
}

fn cluster_frame(body: &[u8]) {
    if let Some(Ok(w)) = wire::decode(body) {
        let again = wire::encode(&w);
        let back = wire::decode(&again).expect("our tag").expect("what we wrote decodes");
        assert_eq!(format!("{back:?}"), format!("{w:?}"));
    }
}

pub fn run(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else { return };
    let whole = read_all(&[stream]);
    assert_eq!(whole, read_all(&crate::chunks(seed, stream)), "the same bytes read differently when split");
    let (items, _) = whole;
    let mut swim = None;
    let mut class = Class::Control;
    for item in items {
        let body = match item {
            Item::Header(h) => {
                class = h.kind.class();
                continue;
            }
            Item::Frame(body) => body,
        };
        assert!(body.len() <= FRAME_BYTES_MAX[class.index()] + 9);
        match class {
            Class::Control => match Control::decode(body) {
                Ok(Control::Swim(message)) => {
                    let me = Member { node: NodeId(1), boot: Boot(7), renewal: 0 };
                    let swim = swim.get_or_insert_with(|| Swim::new(me, &MeshConfig::default(), 3, 42));
                    swim.handle_data(1_000, &message);
                    while swim.poll_send().is_some() {}
                    assert_eq!(swim.identity().node, NodeId(1));
                }
                Ok(Control::App { frame, .. }) => cluster_frame(&frame),
                Ok(Control::Chosen) | Err(_) => {}
            },
            Class::Live | Class::Bulk => {
                if let Ok((_stamp, frame)) = split_data(body) {
                    cluster_frame(&frame);
                }
            }
        }
    }
    // The cluster decoder on the raw bytes too, for inputs that never formed a stream.
    cluster_frame(stream);
}
