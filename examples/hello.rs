//! The "bare hyper hello" ceiling for `bench/run`: a hyper 1.x HTTP/1.1 server that
//! answers every request 200 `{"ok":true}`, on tokio's multi-thread runtime with its
//! default worker count (one per core), as totpd runs.
//!
//! Usage: cargo run --release --example hello -- 127.0.0.1:8080

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = br#"{"ok":true}"#;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: hello ADDR (such as 127.0.0.1:8080)");
        std::process::exit(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hello: bad address {addr}: {e}");
            std::process::exit(2);
        }
    };
    // The same runtime as totpd's: multi-thread, default worker count.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hello: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("hello: listening on {addr}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hello: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    });
}
