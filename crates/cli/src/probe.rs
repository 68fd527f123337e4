//! `streamproxy probe`: a health check (handshake plus the 0.1.0 close-flag header). Exit
//! status 0 when healthy, 1 with a one-line reason when not.

use std::process::ExitCode;
use std::time::Instant;

use streamproxy::proxy;
use streamproxy::proxy::dial::SystemResolver;

use crate::cli::ProbeArgs;
use crate::client::connection;
use crate::config::ClientConfig;

pub(crate) async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let conn = connection(args.conn, &ClientConfig::default()).await?;
    let addrs = conn.server.resolve(&SystemResolver).await?;
    let timeout = args.timeout;
    let started = Instant::now();
    let transport = if args.udp { "udp" } else { "tcp" };
    // Every address in turn, as the forwarders do; the last one's failure is the answer.
    let mut result = Ok(());
    for &server in &addrs {
        result = if args.udp {
            proxy::udp::health_check(server, &conn.dtls, timeout).await
        } else {
            proxy::tcp::health_check(server, &conn.tls, timeout).await
        };
        if result.is_ok() {
            break;
        }
    }
    match result {
        Ok(()) => {
            println!(
                "healthy: {transport} {} answered in {:.1} ms",
                conn.server,
                started.elapsed().as_secs_f64() * 1000.0
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let detail = crate::one_line(&e);
            match streamproxy::proxy::explain::explain(&e) {
                Some(why) => eprintln!(
                    "streamproxy: unhealthy: {transport} {}: {why} ({detail})",
                    conn.server
                ),
                None => eprintln!(
                    "streamproxy: unhealthy: {transport} {}: {detail}",
                    conn.server
                ),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
