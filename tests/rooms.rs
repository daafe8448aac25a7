//! Many broadcasts in one server (`--rooms`), through the binary: each point of the
//! contract in the README's "Rooms" section. Across instances: tests/bridge.rs; the page
//! per room: tests/browser.rs.

mod common;

use common::{Client, Server, numbered_lines};

const UNKNOWN: &[u8] = b"ERR unknown command: the commands are /join NAME and /rooms (start a \
    line with // to send one that begins with /)\n";
const BAD_NAME: &[u8] = b"ERR bad room name: 1 to 64 of A-Z a-z 0-9 _ -\n";

/// Moves `client` to room `name` and reads the server's `OK`.
fn join(client: &mut Client, name: &str) {
    client.send(format!("/join {name}\n").as_bytes());
    client.expect(format!("OK joined {name}\n").as_bytes());
}

/// A WebSocket upgrade request for `path` (`/ws/NAME`), whole.
fn upgrade_to(path: &str) -> String {
    common::frames::upgrade_request("x", "").replacen("GET /ws ", &format!("GET {path} "), 1)
}

/// Asks for `/rooms` and returns the answer line.
fn rooms(client: &mut Client) -> String {
    client.send(b"/rooms\n");
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        line.extend_from_slice(&client.read_exact(1));
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn without_rooms_a_line_starting_with_a_slash_is_an_ordinary_line() {
    let server = Server::start(&[]);
    let mut sender = server.connect();
    let mut receiver = server.connect();
    sender.send(b"/join x\n/rooms\n//two\n/what\n");
    receiver.expect(b"/join x\n/rooms\n//two\n/what\n");
}

#[test]
fn rooms_are_isolated_and_every_client_starts_in_main() {
    let server = Server::start(&["--rooms"]);
    let (mut x1, mut x2, mut main1, mut main2) = (
        server.connect(),
        server.connect(),
        server.connect(),
        server.connect(),
    );
    join(&mut x1, "x");
    join(&mut x2, "x");
    join(&mut x2, "x"); // where it is already: OK, and nothing changes
    x1.send(b"in x\n");
    main1.send(b"in main\n");
    x2.expect(b"in x\n");
    main2.expect(b"in main\n");
    // Had a line crossed rooms, it would come before these.
    x2.send(b"x again\n");
    main2.send(b"main again\n");
    x1.expect(b"x again\n");
    main1.expect(b"main again\n");
}

#[test]
fn ok_joined_comes_after_the_old_rooms_lines_and_before_the_new_ones() {
    // With --echo the mover is owed its own lines: in one read, a line for main, the move,
    // and a line for x. It must get the first before the OK, the last after it.
    let server = Server::start(&["--rooms", "--echo"]);
    let mut mover = server.connect();
    let mut in_main = server.connect();
    let mut in_x = server.connect();
    join(&mut in_x, "x");
    mover.send(b"for main\n/join x\nfor x\n");
    mover.expect(b"for main\nOK joined x\nfor x\n");
    in_main.expect(b"for main\n");
    in_x.expect(b"for x\n");
    // Nothing of the other room reached either.
    in_main.send(b"main end\n");
    in_main.expect(b"main end\n");
    in_x.send(b"x end\n");
    in_x.expect(b"x end\n");
    mover.expect(b"x end\n");
}

#[test]
fn a_joiner_gets_its_new_rooms_history_after_the_ok_then_the_live_lines() {
    let server = Server::start(&["--rooms", "--history", "3"]);
    let mut x_sender = server.connect();
    let mut x_witness = server.connect();
    join(&mut x_sender, "x");
    join(&mut x_witness, "x");
    let x_lines = numbered_lines("x", 5);
    x_sender.send(&x_lines);
    x_witness.expect(&x_lines);
    let mut main_sender = server.connect();
    let mut main_witness = server.connect();
    main_sender.send(b"m1\n");
    main_witness.expect(b"m1\n");

    let mut joiner = server.connect();
    joiner.expect(b"m1\n"); // main's history: its own room's only
    joiner.send(b"/join x\n");
    joiner.expect(b"OK joined x\nx-2\nx-3\nx-4\n");
    x_sender.send(b"live\n");
    joiner.expect(b"live\n");
    x_witness.expect(b"live\n");
}

#[test]
fn rooms_lists_rooms_by_name_and_a_deserted_room_goes_with_its_history() {
    let mut server = Server::start(&["--rooms", "--history", "10"]);
    let (mut asker, mut also_main) = (server.connect(), server.connect());
    let mut zeta = server.connect();
    join(&mut zeta, "zeta");
    let mut alpha = server.connect();
    join(&mut alpha, "alpha");
    let mut alpha_witness = server.connect();
    join(&mut alpha_witness, "alpha");
    alpha.send(b"kept in alpha\n");
    alpha_witness.expect(b"kept in alpha\n");
    assert_eq!(rooms(&mut asker), "OK rooms alpha:2 main:2 zeta:1\n");

    let gone = [alpha.local_addr(), alpha_witness.local_addr()];
    drop(alpha);
    drop(alpha_witness);
    for addr in gone {
        server.wait_for_disconnect(addr);
    }
    assert_eq!(rooms(&mut also_main), "OK rooms main:2 zeta:1\n");
    // A new alpha starts empty: no history from the old one.
    let mut newcomer = server.connect();
    join(&mut newcomer, "alpha");
    let mut speaker = server.connect();
    join(&mut speaker, "alpha");
    speaker.send(b"fresh\n");
    newcomer.expect(b"fresh\n");
    drop((zeta, asker, also_main, newcomer, speaker));
    let stats = server.stop_for_stats();
    assert!(stats.contains(" rooms: now=0 peak=3"), "{stats}");
    // Each room's history went with it: nothing is counted as kept any more.
    assert!(stats.contains(" history: lines=0 bytes=0"), "{stats}");
}

#[test]
fn the_escape_sends_a_slash_line_and_mistakes_get_err_and_stay_in_their_room() {
    let mut server = Server::start(&["--rooms"]);
    let mut sender = server.connect();
    let mut receiver = server.connect();
    sender.send(b"//slash\n/nope\n/join bad!name\n/join\n/JOIN x\n");
    sender.send(format!("/join {}\n", "n".repeat(65)).as_bytes());
    sender.send(b"/join \n/rooms extra\nstill here\n/rooms\r\n");
    sender.expect(UNKNOWN);
    sender.expect(BAD_NAME);
    sender.expect(BAD_NAME);
    sender.expect(UNKNOWN);
    sender.expect(BAD_NAME);
    sender.expect(BAD_NAME);
    sender.expect(UNKNOWN);
    sender.expect(b"OK rooms main:2\n"); // telnet's line end is a line end
    // The commands never reach anyone, and the sender is still in main.
    receiver.expect(b"/slash\nstill here\n");
    let longest = "n".repeat(64);
    join(&mut sender, &longest);
    assert_eq!(rooms(&mut sender), format!("OK rooms main:1 {longest}:1\n"));
    drop((sender, receiver));
    let stats = server.stop_for_stats();
    assert!(
        stats.contains(" lines_in=2 "),
        "commands are no lines: {stats}"
    );
}

#[test]
fn max_rooms_refuses_the_room_one_past_it_and_the_gauges_count_rooms() {
    let mut server = Server::start(&["--rooms", "--max-rooms", "2", "--http", "127.0.0.1:0"]);
    let (mut a, mut b, mut c) = (server.connect(), server.connect(), server.connect());
    join(&mut a, "x");
    join(&mut c, "x");
    a.send(b"/join y\n");
    a.expect(
        b"ERR too many rooms (--max-rooms 2): join one that has members (/rooms lists them)\n",
    );
    assert_eq!(rooms(&mut a), "OK rooms main:1 x:2\n", "a stayed in x");
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\nbroadcast_server_rooms 2\n"),
        "{metrics}"
    );
    // Alone in its room, a client may move on at the limit: its room goes as it leaves.
    join(&mut b, "x"); // main goes with its last member
    join(&mut a, "y");
    join(&mut a, "z");
    assert_eq!(rooms(&mut a), "OK rooms x:2 z:1\n");
    // Now a newcomer has no room to start in.
    let mut refused = Client::connect_raw(server.addr());
    assert_eq!(
        refused.read_to_eof(),
        b"ERR too many rooms (--max-rooms 2): room main cannot open; try again later\n"
    );
    let refused = server.http(&upgrade_to("/ws/another"));
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    assert!(refused.contains("room another cannot open"), "{refused}");
    drop((a, b, c));
    let stats = server.stop_for_stats();
    assert!(stats.contains(" rooms: now=0 peak=2"), "{stats}");
}

#[test]
fn a_client_alone_in_its_room_leaves_no_room_behind_at_the_limit() {
    // A long hold: a new room's first batch waits a quarter of it (250 ms), so main's
    // line is still on its way when its only member moves; main must go all the same.
    let server = Server::start(&["--rooms", "--max-rooms", "1", "--coalesce-us", "1000000"]);
    let mut alone = server.connect();
    alone.send(b"hello\n/join x\n");
    alone.expect(b"OK joined x\n");
    let mut late = Client::connect_raw(server.addr());
    assert_eq!(
        late.read_to_eof(),
        b"ERR too many rooms (--max-rooms 1): room main cannot open; try again later\n"
    );
    assert_eq!(rooms(&mut alone), "OK rooms x:1\n");
}

#[test]
fn a_flood_of_commands_is_obeyed_in_order_a_turns_worth_at_a_time() {
    // -v: the server says when a client's commands wait for its next turn.
    let server = Server::start(&["--rooms", "-v"]);
    let mut sender = server.connect();
    let mut receiver = server.connect();
    let mut flood = Vec::new();
    let mut replies = Vec::new();
    let mut lines = Vec::new();
    for i in 0..2000 {
        flood.extend_from_slice(format!("/rooms\nline-{i}\n").as_bytes());
        replies.extend_from_slice(b"OK rooms main:2\n");
        lines.extend_from_slice(format!("line-{i}\n").as_bytes());
    }
    flood.extend_from_slice(b"/join x\nin x\n");
    replies.extend_from_slice(b"OK joined x\n");
    sender.send(&flood);
    sender.expect(&replies);
    receiver.expect(&lines);
    let mut in_x = server.connect();
    join(&mut in_x, "x");
    in_x.send(b"x end\n");
    sender.expect(b"x end\n");
    receiver.send(b"main end\n");
    receiver.send(b"/rooms\n");
    receiver.expect(b"OK rooms main:1 x:2\n");
    // 2,001 commands, 64 a turn: 32 turns or more, each but the last of a read's lines
    // waiting (the flood arrives in a few reads at most).
    let token = server.token_of(&sender);
    server.wait_for_logs(
        &format!(
            "token {token}: its commands' budget for this turn is spent; the rest of its \
             lines wait for its next turn"
        ),
        16,
    );
}

#[test]
fn without_rooms_there_is_no_room_gauge_or_max_rooms() {
    let (code, _, stderr) = Server::run_to_exit(&["--max-rooms", "5"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--rooms"), "{stderr}");
    let (code, _, stderr) = Server::run_to_exit(&["--rooms", "--max-rooms", "0"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("--max-rooms must be at least 1"),
        "{stderr}"
    );
    let mut server = Server::start(&["--http", "127.0.0.1:0"]);
    let (_, metrics) = server.get("/metrics");
    assert!(!metrics.contains("broadcast_server_rooms"), "{metrics}");
    let stats = server.stop_for_stats();
    assert!(!stats.contains("rooms:"), "{stats}");
}

#[test]
fn a_join_that_replays_history_costs_its_bytes_in_the_turns_budget() {
    let server = Server::start(&["--rooms", "--history", "1000", "-v"]);
    let mut sender = server.connect();
    let mut witness = server.connect();
    join(&mut sender, "h");
    join(&mut witness, "h");
    let history = numbered_lines(&"h".repeat(60), 1000); // about 64 KiB
    sender.send(&history);
    witness.expect(&history);
    let mut hopper = server.connect();
    let mut hops = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..10 {
        hops.extend_from_slice(b"/join h\n/join main\n");
        answers.extend_from_slice(b"OK joined h\n");
        answers.extend_from_slice(&history);
        answers.extend_from_slice(b"OK joined main\n");
    }
    hopper.send(&hops);
    hopper.expect(&answers);
    // 20 commands, far under 64, but each join to h replays 64 KiB: the turn's budget ran
    // out, and the rest waited.
    let token = server.token_of(&hopper);
    server.wait_for_logs(
        &format!("token {token}: its commands' budget for this turn is spent"),
        2,
    );
}

#[test]
fn lines_after_a_join_go_to_the_new_room_even_when_the_client_leaves_right_after() {
    // More commands than one turn obeys, a move, a line, then the client's end: the line
    // goes to the room it moved to, never to the one it left (whether the end is seen
    // before the waiting lines are obeyed, or after).
    let server = Server::start(&["--rooms"]);
    let mut in_main = server.connect();
    let mut in_b = server.connect();
    join(&mut in_b, "b");
    let mut leaver = server.connect();
    let mut lines = b"/rooms\n".repeat(100);
    lines.extend_from_slice(b"/join b\nsecret for b\n");
    leaver.send(&lines);
    leaver.half_close();
    in_b.expect(b"secret for b\n");
    server.wait_for_disconnect(leaver.local_addr());
    let mut probe = server.connect();
    probe.send(b"main end\n");
    in_main.expect(b"main end\n"); // and not "secret for b" before it
}

#[test]
fn lines_waiting_behind_commands_at_a_stop_signal_are_delivered_to_their_rooms() {
    let mut server = Server::start(&["--rooms"]);
    let mut receivers: Vec<Client> = (0..4)
        .map(|room| {
            let mut receiver = server.connect();
            join(&mut receiver, &format!("room{room}"));
            receiver
        })
        .collect();
    let mut writer = server.connect();
    let mut flood = Vec::new();
    let mut owed = vec![Vec::new(); receivers.len()];
    for i in 0..400 {
        flood.extend_from_slice(format!("/join room{}\nC-{i}\n", i % 4).as_bytes());
        owed[i % 4].extend_from_slice(format!("C-{i}\n").as_bytes());
    }
    writer.send(&flood);
    // At once: most of its lines still wait behind its commands (64 a turn).
    server.signal(libc::SIGTERM);
    for (receiver, owed) in receivers.iter_mut().zip(&owed) {
        assert_eq!(
            String::from_utf8_lossy(&receiver.read_to_eof()),
            String::from_utf8_lossy(owed)
        );
    }
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn websocket_clients_join_by_path_use_commands_and_a_bad_name_is_a_400() {
    let server = Server::start(&["--rooms", "--http", "127.0.0.1:0"]);
    let mut ws_x = server.connect_websocket_to("/ws/x");
    let mut ws_main = server.connect_websocket();
    let mut tcp_x = server.connect();
    join(&mut tcp_x, "x");
    let mut tcp_main = server.connect();
    tcp_x.send(b"hello x\n");
    tcp_main.send(b"hello main\n");
    ws_x.expect_text("hello x");
    ws_main.expect_text("hello main");
    ws_x.send_text("/rooms");
    ws_x.expect_text("OK rooms main:2 x:2");
    ws_main.send_text("from the web");
    tcp_main.expect(b"from the web\n");

    let bad = server.http(&upgrade_to("/ws/bad!name"));
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    assert!(
        bad.ends_with("bad room name: 1 to 64 of A-Z a-z 0-9 _ -\n"),
        "{bad}"
    );
    for path in ["/ws/", "/ws/a.b", &format!("/ws/{}", "n".repeat(65))] {
        let bad = server.http(&upgrade_to(path));
        assert!(bad.starts_with("HTTP/1.1 400 "), "{path}: {bad}");
    }
    // Without --rooms there is no /ws/NAME at all, good name or bad.
    let plain = Server::start(&["--http", "127.0.0.1:0"]);
    for path in ["/ws/x", "/ws/bad!name"] {
        let off = plain.http(&upgrade_to(path));
        assert!(off.starts_with("HTTP/1.1 404 "), "{path}: {off}");
    }
}

#[test]
fn a_slow_consumer_in_one_room_is_cut_and_no_one_elsewhere_notices() {
    let server = Server::start(&["--rooms"]);
    let mut stuck = server.connect();
    stuck.set_receive_buffer(4096);
    join(&mut stuck, "x");
    let mut x_sender = server.connect();
    join(&mut x_sender, "x");
    let mut x_reader = server.connect();
    join(&mut x_reader, "x");
    let mut main_sender = server.connect();
    let mut main_reader = server.connect();
    // Far more than the socket buffers (up to 4 MiB each way) and --max-queue (8 MiB) hold,
    // sent while the reader reads (it keeps up; the stuck one does not).
    let flood = numbered_lines(&"f".repeat(100), 250_000);
    let sending = {
        let flood = flood.clone();
        std::thread::spawn(move || {
            x_sender.send(&flood);
            x_sender
        })
    };
    x_reader.expect(&flood);
    let mut x_sender = sending.join().expect("the sender thread");
    let why = server.wait_for_disconnect(stuck.local_addr());
    assert!(why.contains("slow consumer"), "{why}");
    main_sender.send(b"main is fine\n");
    main_reader.expect(b"main is fine\n");
    x_sender.send(b"x is fine\n");
    x_reader.expect(b"x is fine\n");
}
