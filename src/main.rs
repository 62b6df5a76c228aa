fn main() {
    std::process::exit(provision::cli::run());
}
