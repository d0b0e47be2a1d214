import CoQuantModel
import CoQuantTensor
import Foundation

// Zero-shot tasks scored as lm-evaluation-harness 0.4 scores them (CONVENTIONS.md §3.3; the request rules are written
// out in Tests/Fixtures/zeroshot/README.md). Names mirror lm-eval's: a task builds `docs`, each doc a list of
// `loglikelihood(context, continuation)` requests, the model answers each with (Σ log p(continuation), is_greedy),
// and `process_results` turns one doc's answers into acc / acc_norm.

/// One `loglikelihood` request: the context and the continuation whose log-probability is summed.
public struct LoglikelihoodRequest: Equatable, Sendable {
    public let context: String
    public let continuation: String

    public init(context: String, continuation: String) {
        self.context = context
        self.continuation = continuation
    }
}

/// One document of a task: its requests (one per choice for multiple choice), the choice strings `acc_norm` divides
/// by (lm-eval's doc_to_choice, without the target delimiter) and the gold index (nil for LAMBADA).
public struct Doc: Sendable {
    public let id: Int
    public let requests: [LoglikelihoodRequest]
    public let choices: [String]
    public let gold: Int?
}

public enum OutputType: String, Codable, Sendable {
    case multipleChoice = "multiple_choice"
    case loglikelihood
}

/// A task as its lm-eval YAML defines it: where its data is, how a data row becomes a doc, and the metrics it reports.
public struct ZeroShotTask: Sendable {
    public let name: String
    /// Data files relative to the data folder (data/SOURCES.md lists their origin and licence).
    public let files: [String]
    public let outputType: OutputType
    /// Whether lm-eval's YAML lists `acc_norm` (winogrande, boolq, social_iqa report `acc` only).
    public let reportsAccNorm: Bool
    /// (resolved paths of `files`, limit) → the first `limit` docs (all when nil).
    let makeDocs: @Sendable ([String], Int?) throws -> [Doc]

    /// Reads the task's docs from `dataDir`.
    public func docs(dataDir: String, limit: Int? = nil) throws -> [Doc] {
        try makeDocs(files.map { dataDir + "/" + $0 }, limit)
    }

    /// The nine tasks `--tasks all` runs.
    public static let all: [ZeroShotTask] = [piqa, arcEasy, arcChallenge, hellaswag, winogrande, boolq, lambadaOpenAI, socialIQA, openBookQA]

    /// The task called `name`, or an error listing the valid names.
    public static func named(_ name: String) throws -> ZeroShotTask {
        guard let t = all.first(where: { $0.name == name }) else {
            throw EvalError("unknown task \"\(name)\" (valid: \(all.map(\.name).joined(separator: ", ")))")
        }
        return t
    }
}

public struct EvalError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

// MARK: - Task definitions (lm-eval's doc_to_text / doc_to_choice / doc_to_target; target_delimiter " " everywhere)

/// Multiple choice with one shared context: continuation k = " " + choice k.
func multipleChoiceDoc(id: Int, context: String, choices: [String], gold: Int) -> Doc {
    Doc(id: id, requests: choices.map { LoglikelihoodRequest(context: context, continuation: " " + $0) }, choices: choices, gold: gold)
}

func checkGold(_ gold: Int, _ choices: [String], _ row: JSONLRow) throws -> Int {
    guard choices.indices.contains(gold) else { throw row.error("gold \(gold) is not an index into \(choices.count) choices") }
    return gold
}

extension ZeroShotTask {
    /// piqa.yaml: "Question: {{goal}}\nAnswer:", choices [sol1, sol2], gold = label. The official files keep the
    /// solutions' trailing spaces, which lm-eval scores (they become tokens); the labels are a separate file.
    static let piqa = ZeroShotTask(name: "piqa", files: ["piqa/valid.jsonl", "piqa/valid-labels.lst"],
                                   outputType: .multipleChoice, reportsAccNorm: true) { paths, limit in
        let rows = try readJSONL(paths[0], limit: limit)
        let labels = try readLines(paths[1])
        guard labels.count >= rows.count else {
            throw DataFileError(paths[1], "has \(labels.count) labels for at least \(rows.count) rows of \(paths[0])")
        }
        return try rows.enumerated().map { i, row in
            guard let label = Int(labels[i].trimmingCharacters(in: .whitespaces)), label == 0 || label == 1 else {
                throw DataFileError(paths[1], line: i + 1, "expected a label 0 or 1, found \"\(labels[i])\"")
            }
            return multipleChoiceDoc(id: i, context: "Question: \(try row.string("goal"))\nAnswer:",
                                     choices: [try row.string("sol1"), try row.string("sol2")], gold: label)
        }
    }

    /// arc_easy.yaml / arc_challenge.yaml: "Question: {{question}}\nAnswer:", choices.text, gold = index of answerKey.
    /// The llm-foundry rows store the question already prefixed with "Question: " and the gold index.
    static func arc(_ name: String, _ file: String) -> ZeroShotTask {
        ZeroShotTask(name: name, files: [file], outputType: .multipleChoice, reportsAccNorm: true) { paths, limit in
            try readJSONL(paths[0], limit: limit).enumerated().map { i, row in
                let query = try row.string("query"), choices = try row.strings("choices")
                guard query.hasPrefix("Question: ") else { throw row.error("\"query\" does not start with \"Question: \"") }
                return multipleChoiceDoc(id: i, context: query + "\nAnswer:", choices: choices,
                                         gold: try checkGold(try row.int("gold"), choices, row))
            }
        }
    }

    static let arcEasy = arc("arc_easy", "arc/arc_easy_test.llmfoundry.jsonl")
    static let arcChallenge = arc("arc_challenge", "arc/arc_challenge_test.llmfoundry.jsonl")

    /// hellaswag: query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices =
    /// preprocess(ending). The llama.cpp file has 6 lines per item (label + ": " + ctx, gold, 4 endings) with ctx_a and
    /// ctx_b joined, so they are split again by the fixture generator's rule (`splitHellaswagContext`).
    static let hellaswag = ZeroShotTask(name: "hellaswag", files: ["hellaswag/hellaswag_val_full.txt.bz2"],
                                        outputType: .multipleChoice, reportsAccNorm: true) { paths, limit in
        let lines = try readLines(paths[0])
        guard lines.count % 6 == 0 else {
            throw DataFileError(paths[0], "has \(lines.count) lines, not a multiple of 6 (context, gold, 4 endings per item)")
        }
        let n = min(lines.count / 6, limit ?? .max)
        return try (0..<n).map { k in
            let head = String(lines[6 * k])
            guard let sep = head.range(of: ": ") else { throw DataFileError(paths[0], line: 6 * k + 1, "expected \"activity label: context\"") }
            guard let gold = Int(lines[6 * k + 1]), (0..<4).contains(gold) else {
                throw DataFileError(paths[0], line: 6 * k + 2, "expected a gold index 0–3, found \"\(lines[6 * k + 1])\"")
            }
            let (ctxA, ctxB) = splitHellaswagContext(String(head[sep.upperBound...]))
            let query = hellaswagPreprocess(String(head[..<sep.lowerBound]) + ": " + ctxA + " " + pythonCapitalize(ctxB))
            return multipleChoiceDoc(id: k, context: query, choices: lines[(6 * k + 2)..<(6 * k + 6)].map { hellaswagPreprocess(String($0)) }, gold: gold)
        }
    }

    /// winogrande (partial evaluation): one context per option, `sentence[:blank] + option_k`, and the shared
    /// continuation " " + `sentence[blank+1:].strip()`. The llm-foundry rows store exactly those two contexts and the
    /// stripped continuation.
    static let winogrande = ZeroShotTask(name: "winogrande", files: ["winogrande/winogrande_dev.llmfoundry.jsonl"],
                                         outputType: .multipleChoice, reportsAccNorm: false) { paths, limit in
        try readJSONL(paths[0], limit: limit).enumerated().map { i, row in
            let contexts = try row.strings("context_options")
            guard contexts.count == 2 else { throw row.error("\"context_options\" has \(contexts.count) entries, expected 2") }
            let continuation = " " + pythonStrip(try row.string("continuation"))
            return Doc(id: i, requests: contexts.map { LoglikelihoodRequest(context: $0, continuation: continuation) },
                       choices: contexts, gold: try checkGold(try row.int("gold"), contexts, row))
        }
    }

    /// super_glue/boolq: "{{passage}}\nQuestion: {{question}}?\nAnswer:", choices ["no", "yes"]. The llm-foundry
    /// query is "Passage: P\nQuestion: Q?" (P split off at the last "\nQuestion: "; super_glue's "Title -- " prefix of
    /// the passage is missing from this copy, see data/SOURCES.md).
    static let boolq = ZeroShotTask(name: "boolq", files: ["boolq/boolq_dev.llmfoundry.jsonl"],
                                    outputType: .multipleChoice, reportsAccNorm: false) { paths, limit in
        try readJSONL(paths[0], limit: limit).enumerated().map { i, row in
            let query = try row.string("query")
            guard query.hasPrefix("Passage: "), query.hasSuffix("?"),
                  let q = query.range(of: "\nQuestion: ", options: .backwards) else {
                throw row.error("\"query\" is not \"Passage: …\\nQuestion: …?\"")
            }
            let passage = query[query.index(query.startIndex, offsetBy: 9)..<q.lowerBound]
            let question = query[q.upperBound...].dropLast()
            let choices = ["no", "yes"]
            return multipleChoiceDoc(id: i, context: "\(passage)\nQuestion: \(question)?\nAnswer:", choices: choices,
                                     gold: try checkGold(try row.int("gold"), choices, row))
        }
    }

    /// lambada_openai: text = context + " " + last word; lm-eval scores " " + text.split(" ")[-1] after
    /// " ".join(text.split(" ")[:-1]) (a split on spaces only, so a "word" may contain newlines).
    static let lambadaOpenAI = ZeroShotTask(name: "lambada_openai", files: ["lambada/lambada_openai_test.llmfoundry.jsonl"],
                                            outputType: .loglikelihood, reportsAccNorm: false) { paths, limit in
        try readJSONL(paths[0], limit: limit).enumerated().map { i, row in
            let text = try row.string("context") + " " + row.string("continuation")
            let words = text.split(separator: " ", omittingEmptySubsequences: false)
            let request = LoglikelihoodRequest(context: words.dropLast().joined(separator: " "), continuation: " " + words.last!)
            return Doc(id: i, requests: [request], choices: [String(words.last!)], gold: nil)
        }
    }

    /// siqa.yaml: "Q: {{context}} {{question}}\nA:", choices [answerA, answerB, answerC]. The common-bench rows give
    /// the answer as text; its first occurrence among the options is the gold index.
    static let socialIQA = ZeroShotTask(name: "social_iqa", files: ["siqa/siqa_dev.commonbench.jsonl"],
                                        outputType: .multipleChoice, reportsAccNorm: false) { paths, limit in
        try readJSONL(paths[0], limit: limit).enumerated().map { i, row in
            let options = try row.strings("options"), answer = try row.string("answer")
            guard options.count == 3 else { throw row.error("\"options\" has \(options.count) entries, expected 3") }
            guard let gold = options.firstIndex(of: answer) else { throw row.error("\"answer\" is not one of the options") }
            return multipleChoiceDoc(id: i, context: "Q: \(try row.string("context")) \(try row.string("question"))\nA:",
                                     choices: options, gold: gold)
        }
    }

    /// openbookqa.yaml: the bare question_stem (no "Question:"/"Answer:"), choices.text.
    static let openBookQA = ZeroShotTask(name: "openbookqa", files: ["openbookqa/openbookqa_test.llmfoundry.jsonl"],
                                         outputType: .multipleChoice, reportsAccNorm: true) { paths, limit in
        try readJSONL(paths[0], limit: limit).enumerated().map { i, row in
            let choices = try row.strings("choices")
            return multipleChoiceDoc(id: i, context: try row.string("query"), choices: choices,
                                     gold: try checkGold(try row.int("gold"), choices, row))
        }
    }
}

// MARK: - Python string semantics the task definitions rely on

/// Python's `str.strip()`.
func pythonStrip(_ s: String) -> String { s.trimmingCharacters(in: .whitespacesAndNewlines) }

/// Python's `str.capitalize()`: first character upper-cased, **the rest lower-cased**.
func pythonCapitalize(_ s: String) -> String { s.prefix(1).uppercased() + s.dropFirst().lowercased() }

/// lm-eval's hellaswag `preprocess`: strip, " [title]" → ". ", drop every "[…]" (non-greedy), then one pass of
/// "  " → " " (Python's `replace`, so three spaces become two).
func hellaswagPreprocess(_ text: String) -> String {
    var t = pythonStrip(text).replacingOccurrences(of: " [title]", with: ". ")
    t = bracketed.stringByReplacingMatches(in: t, range: NSRange(t.startIndex..., in: t), withTemplate: "")
    return t.replacingOccurrences(of: "  ", with: " ")
}

private let bracketed = try! NSRegularExpression(pattern: "\\[.*?\\]")

/// The fixture generator's recovery of (ctx_a, ctx_b) from llama.cpp's joined ctx: a context that ends a sentence
/// has ctx_b = ""; otherwise ctx_b is the unfinished last sentence after the last ". ", "? " or "! ".
func splitHellaswagContext(_ ctx: String) -> (String, String) {
    var c = Substring(ctx)
    while let last = c.last, last.isWhitespace { c = c.dropLast() }
    guard let last = c.last, !".!?\"'".contains(last) else { return (ctx, "") }
    let cut = [". ", "? ", "! "].compactMap { c.range(of: $0, options: .backwards)?.lowerBound }.max()
    guard let cut else { return ("", String(c)) }
    return (String(c[...cut]), String(c[c.index(cut, offsetBy: 2)...]))
}

// MARK: - Scoring

/// The model's answer to one request.
public struct LoglikelihoodResult: Codable, Equatable, Sendable {
    public let loglikelihood: Double
    public let isGreedy: Bool
    public let continuationTokens: Int
    /// The request was longer than max_length + 1 tokens and lost tokens on the left, as lm-eval truncates.
    public let truncated: Bool

    enum CodingKeys: String, CodingKey {
        case loglikelihood, isGreedy = "is_greedy", continuationTokens = "continuation_tokens", truncated
    }
}

/// Answers `loglikelihood` requests with one model, with lm-eval's HFLM results but sharing work: the requests of
/// one doc usually share their context, so that prefix runs once and each continuation continues from it, and
/// several docs go through the model in one packed pass.
public final class LoglikelihoodScorer {
    public let model: LlamaModel
    public let tokenizer: Tokenizer
    /// The longest model input (lm-eval's max_length: the model's max_position_embeddings unless overridden).
    public let maxLength: Int

    public init(model: LlamaModel, tokenizer: Tokenizer, maxLength: Int? = nil) {
        self.model = model
        self.tokenizer = tokenizer
        self.maxLength = maxLength ?? model.config.maxPositionEmbeddings
    }

    /// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation, then the
    /// continuation's tokens are those of `encode(context + continuation)` after `encode(context)` — not
    /// `encode(continuation)`, which can differ where a token spans the boundary. An empty context becomes the
    /// prefix token (BOS, else end-of-text).
    public func encodePair(_ request: LoglikelihoodRequest) -> (context: [Int], continuation: [Int]) {
        var context = Substring(request.context), continuation = request.continuation
        if context.isEmpty {
            let prefix = tokenizer.bosTokenId ?? tokenizer.eosTokenIds.first ?? 0
            return ([prefix], tokenizer.encode(continuation))
        }
        var spaces = 0
        while let last = context.last, last.isWhitespace { context = context.dropLast(); spaces += 1 }
        if spaces > 0 { continuation = String(request.context.suffix(spaces)) + continuation }
        let whole = tokenizer.encode(String(context) + continuation)
        let contextIds = tokenizer.encode(String(context))
        return (contextIds, Array(whole[min(contextIds.count, whole.count)...]))
    }

    /// One doc's requests as model inputs, as lm-eval builds them: (context + continuation)[-(max_length + 1):][:-1];
    /// the continuation's tokens are predicted by the input's last len(continuation) positions.
    public func encode(_ requests: [LoglikelihoodRequest]) throws -> EncodedDoc {
        var inputs: [[Int]] = [], continuations: [[Int]] = [], truncated: [Bool] = []
        for r in requests {
            let (context, continuation) = encodePair(r)
            guard continuation.count <= maxLength else {
                throw EvalError("a continuation of \(continuation.count) tokens does not fit max_length \(maxLength)")
            }
            let whole = context + continuation
            truncated.append(whole.count > maxLength + 1)
            inputs.append(Array(whole.suffix(maxLength + 1).dropLast()))
            continuations.append(continuation)
        }
        return EncodedDoc(inputs: inputs, continuations: continuations, truncated: truncated)
    }

    /// Σ log p(continuation | context) and whether every continuation token is the argmax, per request of one doc.
    public func score(_ requests: [LoglikelihoodRequest]) throws -> [LoglikelihoodResult] {
        score([try encode(requests)])[0]
    }

    /// Scores several docs in one packed forward pass (`PackedSequences`): each doc's shared prefix once, each
    /// request's remainder as a segment continuing it; logits only at the rows that predict continuation tokens.
    public func score(_ docs: [EncodedDoc]) -> [[LoglikelihoodResult]] {
        var ids: [Int] = [], packing = PackedSequences(), logitRows: [Int] = []
        // Per doc and request, the index of its first logit row in `logitRows` (nil: empty continuation).
        var firstLogit: [[Int?]] = []
        for doc in docs {
            var firsts: [Int?] = []
            let scored = doc.continuations.contains { !$0.isEmpty }
            let context = scored && doc.shared > 0 ? packing.append(rows: doc.shared) : nil
            if context != nil { ids += doc.inputs[0][..<doc.shared] }
            for (input, continuation) in zip(doc.inputs, doc.continuations) {
                guard !continuation.isEmpty else { firsts.append(nil); continue }
                let segment = packing.append(rows: input.count - doc.shared, prefix: context)
                let rows = packing.segments[segment].rows
                ids += input[doc.shared...]
                firsts.append(logitRows.count)
                logitRows += (rows.upperBound - continuation.count)..<rows.upperBound
            }
            firstLogit.append(firsts)
        }
        let logits = ids.isEmpty ? [] : model.forward(packed: ids, packing, logits: .rows(logitRows))
        let V = model.config.vocabSize
        return zip(docs, firstLogit).map { doc, firsts in
            doc.continuations.indices.map { k in
                let continuation = doc.continuations[k]
                var ll = 0.0, greedy = true
                if let first = firsts[k] {
                    logits.withUnsafeBufferPointer { p in
                        for (j, token) in continuation.enumerated() {
                            let row = p.baseAddress! + (first + j) * V
                            ll += Double(row[token]) - float32LogSumExp(row, V)
                            if argmax(row, V) != token { greedy = false }
                        }
                    }
                }
                return LoglikelihoodResult(loglikelihood: ll, isGreedy: greedy, continuationTokens: continuation.count,
                                           truncated: doc.truncated[k])
            }
        }
    }
}

/// A doc's requests as token inputs (`LoglikelihoodScorer.encode`).
public struct EncodedDoc: Sendable {
    public let inputs: [[Int]]
    public let continuations: [[Int]]
    public let truncated: [Bool]
    /// Leading tokens every input shares, cut back to before the first row any request needs logits for: they run
    /// once, and each input's remainder continues them.
    public let shared: Int

    init(inputs: [[Int]], continuations: [[Int]], truncated: [Bool]) {
        self.inputs = inputs
        self.continuations = continuations
        self.truncated = truncated
        let firstScored = zip(inputs, continuations).map { $0.count - $1.count }
        shared = inputs.isEmpty ? 0 : min(commonPrefixLength(inputs), firstScored.min()!)
    }

    /// Rows the doc adds to a packed forward pass, and how many of them get logits.
    public var packedRows: Int { shared + inputs.reduce(0) { $0 + $1.count - shared } }
    public var scoredRows: Int { continuations.reduce(0) { $0 + $1.count } }
}

/// log Σ exp(x) as lm-eval's float32 `log_softmax` computes it on CPU: torch's vectorized kernel sums the
func float32LogSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
    let mx = maxElement(x, n)
    var lanes = SIMD8<Float>()
    var i = 0
    while i + 8 <= n {
        lanes += exp8(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self) - mx)
        i += 8
    }
    var lane = 0
    while i < n { lanes[lane] += expf(x[i] - mx); i += 1; lane += 1 }
    return Double(mx) + Double(logf(lanes.sum()))
}

func commonPrefixLength(_ seqs: [[Int]]) -> Int {
    var n = seqs.map(\.count).min() ?? 0
    for s in seqs.dropFirst() {
        var i = 0
        while i < n && s[i] == seqs[0][i] { i += 1 }
        n = i
    }
    return n
}

/// First index of the maximum (torch.argmax and numpy.argmax take the first on ties).
func argmax(_ x: UnsafePointer<Float>, _ n: Int) -> Int {
    var best = 0
    for i in 1..<n where x[i] > x[best] { best = i }
    return best
}

func argmax(_ x: [Double]) -> Int {
    var best = 0
    for i in x.indices.dropFirst() where x[i] > x[best] { best = i }
    return best
}

// MARK: - Metrics (lm-eval's process_results and aggregation)

/// One doc's outcome, as lm-eval logs a sample.
public struct DocResult: Codable, Equatable, Sendable {
    public let docId: Int
    public let gold: Int?
    public let loglikelihoods: [Double]
    public let isGreedy: [Bool]
    public let continuationTokens: [Int]
    public let pred: Int?
    public let predNorm: Int?
    public let acc: Double
    public let accNorm: Double?
    public let truncatedRequests: Int

    enum CodingKeys: String, CodingKey {
        case docId = "doc_id", gold, loglikelihoods, isGreedy = "is_greedy", continuationTokens = "continuation_tokens",
             pred, predNorm = "pred_norm", acc, accNorm = "acc_norm", truncatedRequests = "truncated_requests"
    }

    /// multiple_choice: acc = [argmax(ll) == gold], acc_norm = [argmax(ll / len(choice)) == gold] with len in
    /// Unicode code points (Python's len) of the choice without the delimiter. loglikelihood (LAMBADA): acc = is_greedy.
    public init(doc: Doc, task: ZeroShotTask, results: [LoglikelihoodResult]) {
        docId = doc.id
        gold = doc.gold
        loglikelihoods = results.map(\.loglikelihood)
        isGreedy = results.map(\.isGreedy)
        continuationTokens = results.map(\.continuationTokens)
        truncatedRequests = results.filter(\.truncated).count
        if task.outputType == .loglikelihood {
            pred = nil
            predNorm = nil
            acc = results[0].isGreedy ? 1 : 0
            accNorm = nil
        } else {
            let p = argmax(loglikelihoods)
            let pn = argmax(zip(loglikelihoods, doc.choices).map { $0 / Double($1.unicodeScalars.count) })
            pred = p
            predNorm = pn
            acc = p == doc.gold ? 1 : 0
            accNorm = task.reportsAccNorm ? (pn == doc.gold ? 1 : 0) : nil
        }
    }
}

/// A metric's mean over docs and its standard error as lm-eval computes it (sample standard deviation with ddof 1
/// over √n; nil for a single doc).
public struct MetricValue: Codable, Sendable {
    public let value: Double
    public let stderr: Double?

    public init(mean values: [Double]) {
        let n = Double(values.count), mean = values.reduce(0, +) / n
        value = mean
        if values.count > 1 {
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / (n - 1)
            stderr = (variance / n).squareRoot()
        } else {
            stderr = nil
        }
    }

    public init(value: Double, stderr: Double?) {
        self.value = value
        self.stderr = stderr
    }
}

public struct TaskResult: Codable, Sendable {
    public let task: String
    public let outputType: OutputType
    public let docs: Int
    public let acc: MetricValue
    public let accNorm: MetricValue?
    /// LAMBADA: exp(−mean ll). Its stderr is the delta-method one (lm-eval bootstraps it, so it differs slightly).
    public let perplexity: MetricValue?
    public let truncatedRequests: Int
    public let requests: Int
    /// Wall time of this call; when it resumed an interrupted run, of its last `docs − resumedDocs` docs only.
    public let seconds: Double
    /// Docs read back from an interrupted run rather than scored by this call.
    public let resumedDocs: Int
    /// Per-doc outcomes (lm-eval's logged samples); not part of the encoded summary, the CLI writes them as JSONL.
    public var samples: [DocResult] = []

    enum CodingKeys: String, CodingKey {
        case task, outputType = "output_type", docs, acc, accNorm = "acc_norm", perplexity,
             truncatedRequests = "truncated_requests", requests, seconds, resumedDocs = "resumed_docs"
    }

    /// The figure papers average: acc_norm where the task reports it, else acc (QuaRot/FlatQuant convention).
    public var headline: MetricValue { accNorm ?? acc }
    public var headlineName: String { accNorm == nil ? "acc" : "acc_norm" }

    public init(task: ZeroShotTask, samples: [DocResult], seconds: Double, resumedDocs: Int = 0) {
        self.task = task.name
        outputType = task.outputType
        docs = samples.count
        acc = MetricValue(mean: samples.map(\.acc))
        accNorm = task.reportsAccNorm ? MetricValue(mean: samples.compactMap(\.accNorm)) : nil
        if task.outputType == .loglikelihood {
            let lls = samples.map { $0.loglikelihoods[0] }
            let m = MetricValue(mean: lls)
            let ppl = exp(-m.value)
            perplexity = MetricValue(value: ppl, stderr: m.stderr.map { ppl * $0 })
        } else {
            perplexity = nil
        }
        truncatedRequests = samples.map(\.truncatedRequests).reduce(0, +)
        requests = samples.map(\.loglikelihoods.count).reduce(0, +)
        self.seconds = seconds
        self.resumedDocs = resumedDocs
        self.samples = samples
    }

    public var summary: String {
        var s = String(format: "%@: acc %.4f ± %.4f", task, acc.value, acc.stderr ?? .nan)
        if let accNorm { s += String(format: ", acc_norm %.4f ± %.4f", accNorm.value, accNorm.stderr ?? .nan) }
        if let perplexity { s += String(format: ", perplexity %.3f ± %.3f", perplexity.value, perplexity.stderr ?? .nan) }
        s += String(format: " (%d docs, %.1f s%@%@)", docs, seconds,
                    resumedDocs > 0 ? " for the last \(docs - resumedDocs), \(resumedDocs) resumed" : "", truncatedRequests > 0 ? ", \(truncatedRequests) requests truncated" : "")
        return s
    }
}

/// Scores every doc of `docs` that `done` does not already hold. `done` is what an interrupted run of the same task
/// finished (the first `done.count` docs, as `onDoc` reported them, with the same batch sizes); the resumed result
/// equals an uninterrupted run's bit for bit. Docs are scored in packed batches of about `rowsPerBatch` model rows and
/// `scoredRowsPerBatch` logit rows (1 scores each doc alone); `onDoc` runs after each newly scored doc, so a caller
/// can checkpoint it (an error it throws ends the run); then `progress(done, total, secondsSoFar)`, `done` counting
/// `done`'s docs. `seconds` in the result is this call's time only.
public func evaluate(task: ZeroShotTask, docs: [Doc], scorer: LoglikelihoodScorer, done: [DocResult] = [],
                     rowsPerBatch: Int = 2048, scoredRowsPerBatch: Int = 512,
                     progress: ((Int, Int, Double) -> Void)? = nil,
                     onDoc: ((DocResult) throws -> Void)? = nil) throws -> TaskResult {
    guard !docs.isEmpty else { throw EvalError("\(task.name): no docs to evaluate") }
    precondition(rowsPerBatch >= 1 && scoredRowsPerBatch >= 1, "batch sizes must be at least 1")
    guard done.count <= docs.count else {
        throw EvalError("\(task.name): \(done.count) finished docs, but the task has only \(docs.count)")
    }
    // Results of another data file or --limit would mix silently into the metrics; a doc's id and number of
    // requests catch that cheaply.
    for (r, doc) in zip(done, docs) where r.docId != doc.id || r.loglikelihoods.count != doc.requests.count {
        throw EvalError("\(task.name): finished result of doc \(r.docId) (\(r.loglikelihoods.count) requests) does not fit doc \(doc.id) (\(doc.requests.count) requests) of this run")
    }
    let clock = ContinuousClock.now
    var samples = done
    // Docs go to the model in packed batches: enough rows for efficient GEMMs, logits kept to ~100 MB. The packing
    // changes the GEMMs' rounding, so batch boundaries depend only on the docs (greedy from the first one), never on
    // where a run resumed: a resumed run re-scores the batch it stopped in and reports only its unfinished docs, and
    // its results are bit-identical to an uninterrupted run's. A doc that cannot be encoded ends the run before its
    // batch is scored, for the same reason.
    var start = 0
    while start < docs.count {
        var batch: [EncodedDoc] = [], rows = 0, scored = 0
        while start + batch.count < docs.count && (batch.isEmpty || (rows < rowsPerBatch && scored < scoredRowsPerBatch)) {
            let doc = docs[start + batch.count]
            let encoded: EncodedDoc
            do { encoded = try scorer.encode(doc.requests) } catch { throw EvalError("\(task.name) doc \(doc.id): \(error)") }
            batch.append(encoded); rows += encoded.packedRows; scored += encoded.scoredRows
        }
        let end = start + batch.count
        if end > samples.count {
            let results = scorer.score(batch)
            for i in samples.count..<end {
                let sample = DocResult(doc: docs[i], task: task, results: results[i - start])
                try onDoc?(sample)
                samples.append(sample)
                progress?(samples.count, docs.count, seconds(since: clock))
            }
        }
        start = end
    }
    return TaskResult(task: task, samples: samples, seconds: seconds(since: clock), resumedDocs: done.count)
}
