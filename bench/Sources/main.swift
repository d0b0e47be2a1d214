import CoQuantModel
import CoQuantQuant
import CoQuantTensor
import Foundation

// coquant-bench prefill --model PATH [--tokens 2048] [--repeats 3]
// fp32 prefill (all logits, as perplexity needs) of one sequence; prints per-pass figures and a RESULT line that
// bench/prefill.sh pairs with PyTorch's.
//
// coquant-bench forward --model PATH --windows N [--tokens 2048]
// One fp32 forward pass (all logits) over N windows: the denominator of bench/pipeline.sh's ratio.
//
// coquant-bench hessian [--tokens 2048] [--cols 1536] [--batches 8] [--rounds 3]
// GPTQ's H accumulation of float32 layer inputs (one window a batch), side by side: each batch converted to float64
// and multiplied with dsyrk (the earlier path) vs one float32 ssyrk per batch added into the float64 H (the
// pipeline's path now, GPTQ_CDQUANT.md §6.1); rounds alternate A B; prints the median seconds and the ratio.

func option(_ name: String, _ fallback: String?) -> String? {
    let args = CommandLine.arguments
    if let i = args.firstIndex(of: "--" + name), i + 1 < args.count { return args[i + 1] }
    return fallback
}

let args = CommandLine.arguments
if args.count >= 2, args[1] == "forward", let path = option("model", nil), let n = option("windows", nil).flatMap({ Int($0) }) {
    let tokens = Int(option("tokens", "2048")!)!
    do {
        let model = try ModelLoader.load(path).model
        var rng = SeededGenerator(seed: 0)
        _ = model.forward([1, 2, 3])      // page in the weights
        let t0 = DispatchTime.now().uptimeNanoseconds
        var checksum: Float = 0      // used below, so the passes cannot be optimised away (-Ounchecked drops preconditions)
        for w in 0..<n {
            let ids = (0..<tokens).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
            checksum += model.forward(ids)[0]
            FileHandle.standardError.write("\rwindow \(w + 1)/\(n)".data(using: .utf8)!)
        }
        let s = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        FileHandle.standardError.write("\n".data(using: .utf8)!)
        print(String(format: "RESULT forward windows=%d tokens=%d seconds=%.2f tokens_per_s=%.1f checksum=%g", n, tokens, s, Double(n * tokens) / s, checksum))
        exit(0)
    } catch {
        FileHandle.standardError.write("error: \(error)\n".data(using: .utf8)!)
        exit(1)
    }
}
if args.count >= 2, args[1] == "hessian" {
    let T = Int(option("tokens", "2048")!)!, C = Int(option("cols", "1536")!)!
    let batches = Int(option("batches", "8")!)!, rounds = Int(option("rounds", "3")!)!
    var rng = SeededGenerator(seed: 0)
    let X = (0..<batches).map { _ in (0..<(T * C)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 500 } }
    func time(_ body: () -> Double) -> (Double, Double) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let check = body()
        return (Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9, check)
    }
    var float64Times: [Double] = [], float32Times: [Double] = [], difference = 0.0
    for _ in 0..<rounds {
        let (a, h64) = time {
            var H = HessianAccumulator(columns: C)
            for x in X { H.add(Matrix(rows: T, cols: C, data: x.map(Double.init)), samples: 1) }
            return H.H.data.reduce(0, +)
        }
        let (b, h32) = time {
            var H = HessianAccumulator(columns: C)
            for x in X { x.withUnsafeBufferPointer { H.add($0.baseAddress!, rows: T, samples: 1) } }
            return H.H.data.reduce(0, +)
        }
        float64Times.append(a); float32Times.append(b); difference = abs(h64 - h32) / abs(h64)
    }
    let a = float64Times.sorted()[rounds / 2], b = float32Times.sorted()[rounds / 2]
    print(String(format: "RESULT hessian tokens=%d cols=%d batches=%d float64_dsyrk_s=%.3f float32_ssyrk_s=%.3f speedup=%.2f sum_rel_diff=%.1e",
                 T, C, batches, a, b, a / b, difference))
    exit(0)
}
guard args.count >= 2, args[1] == "prefill", let path = option("model", nil) else {
    FileHandle.standardError.write("usage: coquant-bench prefill --model PATH [--tokens 2048] [--repeats 3]\n       coquant-bench forward --model PATH --windows N [--tokens 2048]\n       coquant-bench hessian [--tokens 2048] [--cols 1536] [--batches 8] [--rounds 3]\n".data(using: .utf8)!)
    exit(2)
}
let tokens = Int(option("tokens", "2048")!)!
let repeats = Int(option("repeats", "3")!)!
do {
    let model = try ModelLoader.load(path).model
    var rng = SeededGenerator(seed: 0)
    let ids = (0..<tokens).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
    _ = model.forward(Array(ids[0..<min(64, tokens)]))     // warm-up: page in weights, grow RoPE tables
    var times: [Double] = [], shares: [Double] = []
    for r in 0..<repeats {
        GEMMClock.seconds = 0
        GEMMClock.enabled = true
        let t0 = DispatchTime.now().uptimeNanoseconds
        let logits = model.forward(ids)
        let s = Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9
        GEMMClock.enabled = false
        precondition(logits.count == tokens * model.config.vocabSize)
        times.append(s)
        // GEMMClock counts thread-seconds; the forward pass keeps `forwardWorkers` threads busy.
        let share = GEMMClock.seconds / (s * Double(forwardWorkers))
        shares.append(share)
        print(String(format: "pass %d: %.3f s, %.1f tokens/s, GEMM %.1f%% of %d cores' time", r + 1, s, Double(tokens) / s, 100 * share, forwardWorkers))
    }
    let order = times.indices.sorted { times[$0] < times[$1] }
    let mid = order[order.count / 2]
    print(String(format: "RESULT swift tokens_per_s=%.2f seconds=%.4f gemm_share=%.4f", Double(tokens) / times[mid], times[mid], shares[mid]))
} catch {
    FileHandle.standardError.write("error: \(error)\n".data(using: .utf8)!)
    exit(1)
}
