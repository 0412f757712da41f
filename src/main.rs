fn main() {
    std::process::exit(edge_eval::cli::main());
}
