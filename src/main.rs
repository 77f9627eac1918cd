fn main() -> std::process::ExitCode {
    workcopy::cli::main()
}
