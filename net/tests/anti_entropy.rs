//! Anti-entropy's messages on the wire: the node-to-node tree, leaf,
//! fetch, repair and reap requests and their replies, and the operator's
//! repair; round trips, and every limit a node holds a peer to.

use holdfast_net::frame::{Frame, Kind, encode_frame};
use holdfast_net::limits::{
    FETCH_KEYS_MAX, FETCH_PAGE_BYTES_MAX, FRAME_BYTES_MAX_DEFAULT, KEY_BYTES_MAX, LEAF_ENTRIES_MAX,
    LEAF_LEAVES_MAX, LEAF_REPLY_BYTES_MAX, OFFER_KEYS_MAX, REPAIR_ENTRIES_MAX,
    REPLY_FRAME_BYTES_MAX_DEFAULT, TREE_INDICES_MAX, TREE_LEAVES, TREE_LEVEL_MAX,
};
use holdfast_net::message::{
    ErrorCode, FetchReply, FetchRequest, LeafEntry, LeafReply, LeafRequest, Message, OfferEntry,
    ReapReply, ReapRequest, RepairReply, RepairRequest, RepairWrite, RepairWriteReply, Reply,
    Request, RequestError, RequestLimits, ScanEntry, TreeReply, TreeRequest, encode_message,
};
use proptest::prelude::*;

fn frame(bytes: &[u8], max: u32) -> Frame {
    Frame::from_bytes(bytes, max).expect("an encoded frame decodes")
}

fn parse<M: Message>(message: &M, limits: &RequestLimits) -> Result<String, RequestError> {
    let frame = frame(&encode_message(7, message), REPLY_FRAME_BYTES_MAX_DEFAULT);
    Request::parse(&frame, limits).map(|request| format!("{request:?}"))
}

fn refused<M: Message>(message: &M) -> ErrorCode {
    parse(message, &RequestLimits::default()).expect_err("refused").code()
}

#[test]
fn tree_requests_parse_within_their_limits() {
    let limits = RequestLimits::default();
    let root = TreeRequest { partition: 3, level: 0, indices: vec![0] };
    let frame = frame(&encode_message(1, &root), FRAME_BYTES_MAX_DEFAULT);
    assert_eq!(frame.kind(), Kind::TREE);
    assert_eq!(
        Request::parse(&frame, &limits),
        Ok(Request::TreeHashes { partition: 3, level: 0, indices: vec![0] })
    );
    // Every leaf at once is the most a request may name, and fits a request
    // frame.
    let leaves: Vec<u16> = (0..TREE_LEAVES as u16).collect();
    let all = TreeRequest { partition: 1, level: TREE_LEVEL_MAX, indices: leaves.clone() };
    let bytes = encode_message(1, &all);
    assert!(bytes.len() <= FRAME_BYTES_MAX_DEFAULT as usize);
    let frame = frame_of(&bytes);
    let parsed = Request::parse(&frame, &limits).expect("every leaf is allowed");
    assert_eq!(parsed, Request::TreeHashes { partition: 1, level: 3, indices: leaves.clone() });

    // Below the leaves, past a level's width, or too many indices.
    assert_eq!(
        refused(&TreeRequest { level: TREE_LEVEL_MAX + 1, ..all.clone() }),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(&TreeRequest { partition: 1, level: 1, indices: vec![16] }),
        ErrorCode::BadRequest
    );
    assert_eq!(
        refused(&TreeRequest { partition: 1, level: 2, indices: vec![256] }),
        ErrorCode::BadRequest
    );
    assert!(parse(&TreeRequest { partition: 1, level: 2, indices: vec![255] }, &limits).is_ok());
    let too_many = TreeRequest { partition: 1, level: 3, indices: vec![0; TREE_INDICES_MAX + 1] };
    assert_eq!(refused(&too_many), ErrorCode::BadRequest);
}

fn frame_of(bytes: &[u8]) -> Frame {
    frame(bytes, REPLY_FRAME_BYTES_MAX_DEFAULT)
}

#[test]
fn leaf_fetch_repair_and_reap_requests_are_held_to_their_limits() {
    let limits = RequestLimits { key_bytes_max: 8, ..RequestLimits::default() };
    let leaf = LeafRequest { partition: 2, leaves: vec![0, 4095] };
    assert_eq!(
        parse(&leaf, &limits),
        Ok(format!("{:?}", Request::LeafEntries { partition: 2, leaves: vec![0, 4095] }))
    );
    assert_eq!(refused(&LeafRequest { partition: 2, leaves: vec![4096] }), ErrorCode::BadRequest);
    let too_many = LeafRequest { partition: 2, leaves: vec![1; LEAF_LEAVES_MAX + 1] };
    assert_eq!(refused(&too_many), ErrorCode::BadRequest);

    let fetch = FetchRequest { partition: 4, keys: vec![b"a".to_vec()], bytes: u32::MAX };
    assert_eq!(
        parse(&fetch, &limits),
        Ok(format!(
            "{:?}",
            Request::Fetch { partition: 4, keys: vec![b"a".to_vec()], bytes: FETCH_PAGE_BYTES_MAX }
        ))
    );
    let long = FetchRequest { keys: vec![vec![0; 9]], ..fetch.clone() };
    assert_eq!(parse(&long, &limits).map_err(|error| error.code()), Err(ErrorCode::KeyTooLarge));
    let too_many = FetchRequest { keys: vec![vec![]; FETCH_KEYS_MAX + 1], ..fetch };
    assert_eq!(refused(&too_many), ErrorCode::BadRequest);

    let entry = ScanEntry { key: b"k".to_vec(), set: vec![1, 2, 3] };
    let repair = RepairWrite { partition: 5, entries: vec![entry.clone()] };
    let frame = frame_of(&encode_message(1, &repair));
    assert_eq!(
        Request::parse(&frame, &limits),
        Ok(Request::RepairWrite { partition: 5, entries: vec![(&b"k"[..], &[1u8, 2, 3][..])] })
    );
    let empty =
        RepairWrite { partition: 5, entries: vec![ScanEntry { set: vec![], ..entry.clone() }] };
    assert_eq!(refused(&empty), ErrorCode::BadRequest);
    let long =
        RepairWrite { partition: 5, entries: vec![ScanEntry { key: vec![0; 9], ..entry.clone() }] };
    assert_eq!(parse(&long, &limits).map_err(|error| error.code()), Err(ErrorCode::KeyTooLarge));
    let too_many = RepairWrite { partition: 5, entries: vec![entry; REPAIR_ENTRIES_MAX + 1] };
    assert_eq!(refused(&too_many), ErrorCode::BadRequest);

    let reap =
        ReapRequest { partition: 6, keys: vec![OfferEntry { key: b"t".to_vec(), token: 9 }] };
    assert_eq!(
        parse(&reap, &limits),
        Ok(format!("{:?}", Request::Reap { partition: 6, keys: vec![(b"t".to_vec(), 9)] }))
    );
    let too_many =
        ReapRequest { partition: 6, keys: vec![OfferEntry::default(); OFFER_KEYS_MAX + 1] };
    assert_eq!(refused(&too_many), ErrorCode::BadRequest);
}

#[test]
fn an_operators_repair_names_one_partition_or_all() {
    let limits = RequestLimits::default();
    let one = frame_of(&encode_message(1, &RepairRequest { all: false, partition: 9 }));
    assert_eq!(one.kind(), Kind::REPAIR);
    assert_eq!(Request::parse(&one, &limits), Ok(Request::Repair { partition: Some(9) }));
    let all = frame_of(&encode_message(1, &RepairRequest { all: true, partition: 0 }));
    assert_eq!(Request::parse(&all, &limits), Ok(Request::Repair { partition: None }));
    assert_eq!(refused(&RepairRequest { all: true, partition: 3 }), ErrorCode::BadRequest);

    let reply = RepairReply {
        node: 1,
        exchanges: 4,
        keys_repaired: 2,
        elapsed_ms: 30,
        ..RepairReply::default()
    };
    let frame = frame_of(&encode_message(1, &reply));
    assert_eq!(frame.kind(), Kind::REPAIR_REPLY);
    assert_eq!(Reply::decode(&frame), Ok(Reply::Repair(reply)));
}

#[test]
fn not_comparable_round_trips_and_is_checked() {
    assert_eq!(TreeReply::new(None).into_hashes(), Ok(None));
    assert_eq!(TreeReply::new(Some(vec![])).into_hashes(), Ok(Some(vec![])));
    assert_eq!(TreeReply::new(Some(vec![1, 2])).into_hashes(), Ok(Some(vec![1, 2])));
    let lying = TreeReply { comparable: false, hashes: vec![1] };
    assert!(lying.into_hashes().is_err());

    assert_eq!(LeafReply::new(None).into_entries(KEY_BYTES_MAX), Ok(None));
    let entries = vec![(b"a".to_vec(), 1), (b"b".to_vec(), 2)];
    assert_eq!(
        LeafReply::new(Some(entries.clone())).into_entries(KEY_BYTES_MAX),
        Ok(Some(entries))
    );
    let lying = LeafReply { comparable: false, entries: vec![LeafEntry::default()] };
    assert!(lying.into_entries(KEY_BYTES_MAX).is_err());
    let long =
        LeafReply { comparable: true, entries: vec![LeafEntry { key: vec![0; 9], hash: 0 }] };
    assert!(long.into_entries(8).is_err());
    let too_many =
        LeafReply { comparable: true, entries: vec![LeafEntry::default(); LEAF_ENTRIES_MAX + 1] };
    assert!(too_many.into_entries(KEY_BYTES_MAX).is_err());
}

#[test]
fn the_largest_leaf_reply_fits_the_reply_frame() {
    // What a node sends at most: the entry limit, keys within the reply's
    // key bytes (here: every entry with a 4 KiB key, 16 MiB in all).
    let entries = (0..LEAF_ENTRIES_MAX as u64)
        .map(|i| LeafEntry { key: vec![(i % 251) as u8; 4096], hash: i })
        .collect();
    let reply = LeafReply { comparable: true, entries };
    let bytes = encode_message(u64::MAX, &reply);
    assert!(bytes.len() <= LEAF_REPLY_BYTES_MAX, "{} > {LEAF_REPLY_BYTES_MAX}", bytes.len());
    let frame = frame(&bytes, REPLY_FRAME_BYTES_MAX_DEFAULT);
    assert_eq!(frame.access::<LeafReply>().expect("valid").entries.len(), LEAF_ENTRIES_MAX);
}

#[test]
fn anti_entropy_kinds_pair_and_are_node_to_node() {
    for (request, reply) in [
        (Kind::TREE, Kind::TREE_REPLY),
        (Kind::LEAF, Kind::LEAF_REPLY),
        (Kind::FETCH, Kind::FETCH_REPLY),
        (Kind::REPAIR_WRITE, Kind::REPAIR_WRITE_REPLY),
        (Kind::REAP, Kind::REAP_REPLY),
    ] {
        assert!(request.is_node() && reply.is_node());
        assert_eq!(request.reply(), Some(reply));
    }
    assert_eq!(
        [Kind::TREE, Kind::LEAF, Kind::FETCH, Kind::REPAIR_WRITE, Kind::REAP].map(Kind::as_u8),
        [0x8a, 0x8b, 0x8c, 0x8d, 0x8e]
    );
    assert!(!Kind::REPAIR.is_node());
    assert_eq!((Kind::REPAIR.as_u8(), Kind::REPAIR_REPLY.as_u8()), (9, 73));
    // A body of the wrong shape for its kind fails validation.
    let garbage = frame_of(&encode_frame(Kind::TREE, 1, &[0xff; 3]));
    assert_eq!(
        Request::parse(&garbage, &RequestLimits::default()).map_err(|error| error.code()),
        Err(ErrorCode::BadRequest)
    );
}

fn round_trip<M: Message + PartialEq + Clone>(message: &M) -> M {
    let bytes = encode_message(3, message);
    frame_of(&bytes).decode::<M>().expect("valid body")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn anti_entropy_messages_round_trip(
        partition in any::<u32>(), level in 0..=3u8,
        indices in prop::collection::vec(any::<u16>(), 0..64),
        hashes in prop::collection::vec(any::<u64>(), 0..64),
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..16),
        comparable in any::<bool>(), bytes in any::<u32>(),
    ) {
        let tree = TreeRequest { partition, level, indices: indices.clone() };
        prop_assert_eq!(round_trip(&tree), tree);
        let reply = TreeReply { comparable, hashes: hashes.clone() };
        prop_assert_eq!(round_trip(&reply), reply);
        let leaf = LeafRequest { partition, leaves: indices };
        prop_assert_eq!(round_trip(&leaf), leaf);
        let entries: Vec<LeafEntry> = keys
            .iter()
            .zip(hashes.iter().chain(std::iter::repeat(&0)))
            .map(|(key, &hash)| LeafEntry { key: key.clone(), hash })
            .collect();
        let reply = LeafReply { comparable, entries };
        prop_assert_eq!(round_trip(&reply), reply);
        let fetch = FetchRequest { partition, keys: keys.clone(), bytes };
        prop_assert_eq!(round_trip(&fetch), fetch);
        let sets: Vec<ScanEntry> =
            keys.iter().map(|key| ScanEntry { key: key.clone(), set: key.clone() }).collect();
        let reply = FetchReply { entries: sets.clone() };
        prop_assert_eq!(round_trip(&reply), reply);
        let repair = RepairWrite { partition, entries: sets };
        prop_assert_eq!(round_trip(&repair), repair);
        prop_assert_eq!(round_trip(&RepairWriteReply {}), RepairWriteReply {});
        let reap = ReapRequest {
            partition,
            keys: keys.iter().map(|key| OfferEntry { key: key.clone(), token: 1 }).collect(),
        };
        prop_assert_eq!(round_trip(&reap), reap);
        prop_assert_eq!(round_trip(&ReapReply {}), ReapReply {});
    }
}
