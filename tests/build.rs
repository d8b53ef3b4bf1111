//! Compiles the Kubernetes CRI protocol (proto/cri/api.proto, `runtime.v1`, as containerd 1.6
//! serves it) into a tonic client for the CRI tests (tests/cri.rs), with protox: no `protoc`
//! needed on the build machine.

fn main() {
    let proto = "proto/cri/api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = match protox::compile([proto], ["proto/cri"]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rkt-tests: compiling {proto}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)
    {
        eprintln!("rkt-tests: generating code from {proto}: {e}");
        std::process::exit(1);
    }
}
