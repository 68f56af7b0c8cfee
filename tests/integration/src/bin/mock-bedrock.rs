//! The mock Bedrock server on its own, for benchmarks: prints its URL on one line, then serves
//! until killed.
//!
//! cargo run --release --manifest-path tests/integration/Cargo.toml --bin mock-bedrock -- \
//!     --delay-ms 200 [--port N] [--answer TEXT]

use custos_integration_tests::mock_bedrock::{MockBedrock, MockConfig};
use std::io::Write;

fn usage(why: &str) -> ! {
    eprintln!(
        "mock-bedrock: {why}\nusage: mock-bedrock [--delay-ms MS] [--port N] [--answer TEXT]"
    );
    std::process::exit(2)
}

fn main() {
    let (mut delay_ms, mut port, mut answer) = (0u64, 0u16, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--delay-ms" => {
                delay_ms = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--delay-ms takes milliseconds"))
            }
            "--port" => {
                port = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--port takes a port number"))
            }
            "--answer" => answer = Some(value()),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let mock = MockBedrock::start_on(MockConfig::default(), port);
    mock.set_delay_ms(delay_ms);
    if let Some(text) = answer {
        mock.set_answer(text);
    }
    let mut out = std::io::stdout();
    // Exactly one line, flushed: the benchmark reads it to learn the port.
    writeln!(out, "{}", mock.url()).expect("stdout");
    out.flush().expect("stdout");
    loop {
        std::thread::park();
    }
}
