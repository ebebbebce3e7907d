//! The `bodega` binary: parse the command line and hand over to the CLI layer.

fn main() -> std::process::ExitCode {
    bodega::cli::main()
}
