use std::process::ExitCode;

fn main() -> ExitCode {
    vipwire::cli::main()
}
