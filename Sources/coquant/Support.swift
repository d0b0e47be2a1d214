import ArgumentParser
import CoQuantModel
import CoQuantQuant
import CoQuantRuntime
import Foundation

/// Flags every command that computes figures shares.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the result as JSON on stdout (the summary line goes to stderr).")
    var json = false

    @Flag(help: "No progress (redrawn in place on a terminal, otherwise logged once a minute).")
    var quiet = false

    var showProgress: Bool { !quiet && isatty(2) == 1 }

    /// Without a terminal (a background run's log), a progress line is printed this often.
    static let progressLogInterval = Duration.seconds(60)

    /// Progress of a long loop: redrawn on a terminal, logged every `progressLogInterval` otherwise, silent with --quiet.
    func progress(_ label: String, resumedAt: Int = 0) -> Progress {
        Progress(enabled: showProgress, label: label, logEvery: quiet ? nil : Self.progressLogInterval, resumedAt: resumedAt)
    }
}

/// Progress on stderr as `label i/N, rate, ETA`: on a terminal (`enabled`) one line redrawn in place; otherwise
/// (a background run's log) nothing, or with `logEvery` that line at most that often, so a log of a run that takes
/// hours shows it is alive and when it should end.
final class Progress {
    let enabled: Bool
    let label: String
    let logEvery: Duration?
    /// Steps a resumed run found done: counted in i/N, left out of the rate and the ETA, which this run measures.
    let resumedAt: Int
    private var lastLogged = ContinuousClock.now

    init(enabled: Bool, label: String, logEvery: Duration? = nil, resumedAt: Int = 0) {
        self.enabled = enabled
        self.label = label
        self.logEvery = logEvery
        self.resumedAt = resumedAt
    }

    /// `seconds`: time since this run started its first step.
    func update(_ done: Int, _ total: Int, seconds: Double, unit: String, perStep: Double) {
        let fresh = done - resumedAt
        let rate = Double(fresh) * perStep / max(seconds, 1e-9)
        let eta = fresh > 0 ? formatDuration(seconds / Double(fresh) * Double(total - done)) : "?"
        let line = String(format: "%@ %d/%d  %.1f %@/s  ETA %@", label, done, total, rate, unit, eta)
        if enabled {
            FileHandle.standardError.write("\r\(line)   ".data(using: .utf8)!)
            if done == total { FileHandle.standardError.write("\n".data(using: .utf8)!) }
        } else if let logEvery, ContinuousClock.now - lastLogged >= logEvery, done < total {
            printErr(line)
            lastLogged = .now
        }
    }
}

func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

/// A command that cannot go on for a reason found while it runs (a model too short for --seqlen, a data file that
/// is missing, a group size the model's dimensions do not allow). ArgumentParser prints a `ValidationError` thrown
/// from `run()` with the root command's usage (`Usage: coquant <subcommand>`), which reads as if the command line
/// could not be parsed; this error prints as `Error: <message>` alone, with exit status 1. Problems with an
/// option's value alone belong in `validate()` as `ValidationError`s, reported with the subcommand's usage.
struct RunError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func printErr(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }

/// Prints `value` as pretty JSON on stdout.
func printJSON<T: Encodable>(_ value: T) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try e.encode(value), as: UTF8.self))
}

/// Finds the project's `data/` folder: `--data` alone when given (a mistyped folder must not silently fall back to
/// other files), else `$COQUANT_DATA`, then `./data`, then next to the executable's build folder
/// (`.build/<config>/coquant` → `data/`).
func locateData(_ explicit: String?, _ relative: String) throws -> String {
    if let explicit {
        guard FileManager.default.fileExists(atPath: explicit + "/" + relative) else {
            throw RunError("--data \(explicit): no file \(relative) there")
        }
        return explicit + "/" + relative
    }
    var candidates: [String] = []
    if let env = ProcessInfo.processInfo.environment["COQUANT_DATA"] { candidates.append(env) }
    candidates.append(FileManager.default.currentDirectoryPath + "/data")
    let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for up in 1...3 {
        var u = exe
        for _ in 0..<up { u = u.deletingLastPathComponent() }
        candidates.append(u.appendingPathComponent("data").path)
    }
    for dir in candidates where FileManager.default.fileExists(atPath: dir + "/" + relative) {
        return dir + "/" + relative
    }
    throw RunError("cannot find data file \(relative); looked in \(candidates.joined(separator: ", ")) (pass --data DIR or set COQUANT_DATA)")
}

/// How a quantized folder runs: on the packed runtime (default) or through the fp32 fake-quantization simulator.
struct ExecutionOptions: ParsableArguments {
    @Flag(help: ArgumentHelp("Run a quantized folder through the fp32 simulator (weights dequantized, activations and KV cache fake-quantized) instead of the packed integer runtime.",
                             discussion: "Both compute the same function up to float summation order; the simulator is what the research tables were measured with."))
    var simulate = false

    @Flag(help: ArgumentHelp("Weight-only folders (W4A16, W3A16): quantize each linear's input to int8 per token at run time and use the integer kernels, as llama.cpp does.",
                             discussion: "Faster prompts; the numbers change slightly (RESULTS.md has the perplexity cost). Folders with quantized activations ignore it."))
    var dynamicInt8 = false

    func validate() throws {
        if simulate && dynamicInt8 { throw ValidationError("--dynamic-int8 runs on the packed runtime: drop --simulate") }
    }
}

/// Loads `path` for inference: a quantized folder on the runtime's packed kernels unless `simulate`.
func loadModel(_ path: String, quiet: Bool, simulate: Bool = true, dynamicInt8: Bool = false) throws -> LoadedModel {
    let start = ContinuousClock.now
    if !simulate && !Runtime.hasAVX2 {
        printErr("warning: this CPU has no AVX2: the runtime's kernels run their scalar references (slow)")
    }
    let loaded = simulate ? try ModelLoader.load(path, requireTokenizer: true)
        : try Runtime.load(path, requireTokenizer: true, dynamicInt8: dynamicInt8)
    try prepareForInference(loaded)
    if !quiet {
        let c = loaded.model.config
        let scheme = loaded.quantizationConfig.map {
            $0.scheme + ($0.formatVersion >= 2 ? "" : ", format v1") + (loaded.packedKernels ? ", packed runtime" : ", fp32 simulator")
        }
        printErr("loaded \(path) (\(c.modelType), \(c.numHiddenLayers) layers, d \(c.hiddenSize), \(loaded.format)\(scheme.map { " " + $0 } ?? "")) in \(ContinuousClock.now - start)")
    }
    return loaded
}

/// Refuses an output path that cannot be created (its nearest existing ancestor is a file or not writable), so a
/// run does not find out only when it writes its result, hours later. `flag` names the option in the message.
func checkCreatable(_ path: String, flag: String) throws {
    var ancestor = URL(fileURLWithPath: path).standardizedFileURL.deletingLastPathComponent()
    var isDirectory: ObjCBool = false
    while !FileManager.default.fileExists(atPath: ancestor.path, isDirectory: &isDirectory) {
        ancestor.deleteLastPathComponent()
    }
    guard isDirectory.boolValue else { throw ValidationError("\(flag) \(path): \(ancestor.path) is a file, not a folder") }
    guard FileManager.default.isWritableFile(atPath: ancestor.path) else {
        throw ValidationError("\(flag) \(path): \(ancestor.path) is not writable")
    }
}
