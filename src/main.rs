//! The `kiln` binary: everything is in the library; this only hands over the command line.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
