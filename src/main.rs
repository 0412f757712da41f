fn main() {
    // SAFETY (both blocks): the process is single-threaded here.
    // candle asks for its thread count on every CPU matmul and, without RAYON_NUM_THREADS,
    // counts physical cores by parsing /proc/cpuinfo each time (~6 % of a decode step). Its
    // answer is fixed for the process, so it is computed once here, before any thread starts.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    // candle's errors capture a backtrace whenever RUST_BACKTRACE is set, and print it inside
    // their message (and so into runs.parquet): library backtraces stay off unless asked for by
    // name; panics keep theirs.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    std::process::exit(edge_eval::cli::main());
}
