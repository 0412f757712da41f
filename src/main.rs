fn main() {
    // candle asks for its thread count on every CPU matmul and, without RAYON_NUM_THREADS,
    // counts physical cores by parsing /proc/cpuinfo each time (~6 % of a decode step). Its
    // answer is fixed for the process, so it is computed once here, before any thread starts.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // SAFETY: the process is single-threaded here.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
    std::process::exit(edge_eval::cli::main());
}
