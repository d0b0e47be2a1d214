import CoQuantModel
import Foundation
import XCTest
@testable import CoQuantEval

/// `evaluate(…, done:)` as `coquant eval --resume` uses it: a task interrupted after some docs and resumed from
/// their saved results ends exactly as an uninterrupted run, on the tiny fixture model.
final class ResumeEvaluationTests: XCTestCase {
    struct Interrupt: Error {}

    /// `tiny-models/a_llama_gqa_tied` (vocab 300) with the byte-level tokenizer that fits its vocabulary.
    static let scorer = Result { () throws -> LoglikelihoodScorer in
        let fixtures = packageRoot + "/Tests/Fixtures/tiny-models"
        let model = try ModelLoader.load(fixtures + "/a_llama_gqa_tied").model
        return LoglikelihoodScorer(model: model, tokenizer: try Tokenizer(tokenizerJSON: fixtures + "/byte_level_tokenizer.json"))
    }

    /// For a multiple-choice task with acc_norm (arc_easy) and LAMBADA (acc from is_greedy, perplexity): interrupted
    /// after 4 of 10 docs, the saved results round-tripped through the samples JSON, resumed: the same per-doc
    /// results and metrics, bit for bit, and only the missing docs scored — whether each doc is scored alone or
    /// several are packed in one pass (then the interrupt falls inside a batch, which is re-scored whole).
    func testResumedTaskEqualsUninterruptedRun() throws {
        let scorer = try Self.scorer.get()
        var unpacked: [String: TaskResult] = [:]    // each task's one-doc-per-pass run, which the packed run must match
        for (name, rowsPerBatch) in [("arc_easy", 1), ("lambada_openai", 1), ("arc_easy", 500), ("lambada_openai", 500)] {
            func evaluate(task: ZeroShotTask, docs: [Doc], scorer: LoglikelihoodScorer, done: [DocResult] = [],
                          progress: ((Int, Int, Double) -> Void)? = nil, onDoc: ((DocResult) throws -> Void)? = nil) throws -> TaskResult {
                try CoQuantEval.evaluate(task: task, docs: docs, scorer: scorer, done: done, rowsPerBatch: rowsPerBatch,
                                         progress: progress, onDoc: onDoc)
            }
            let task = try ZeroShotTask.named(name)
            let docs = try task.docs(dataDir: packageRoot + "/data", limit: 10)
            if rowsPerBatch > 1 {
                // evaluate's greedy packing, to check that the interrupt below falls inside a batch.
                var starts: [Int] = [], rows = 0, scored = 0
                for (i, doc) in docs.enumerated() {
                    if starts.isEmpty || rows >= rowsPerBatch || scored >= 512 { starts.append(i); rows = 0; scored = 0 }
                    let encoded = try scorer.encode(doc.requests)
                    rows += encoded.packedRows; scored += encoded.scoredRows
                }
                XCTAssertFalse(starts.contains(4), "\(name): batches start at \(starts)")
                XCTAssertLessThan(starts.count, 10, name)
            }
            var reported: [Int] = []
            let full = try evaluate(task: task, docs: docs, scorer: scorer, onDoc: { reported.append($0.docId) })
            XCTAssertEqual(reported, Array(0..<10), name)
            if let single = unpacked[name] {
                // Several docs packed in one pass score as each doc alone (float32 sums in another order: 1e-4).
                for (p, s) in zip(full.samples, single.samples) {
                    XCTAssertEqual(p.loglikelihoods.count, s.loglikelihoods.count, "\(name) doc \(p.docId)")
                    for (a, b) in zip(p.loglikelihoods, s.loglikelihoods) {
                        XCTAssertEqual(a, b, accuracy: 1e-4, "\(name) doc \(p.docId): packed vs alone")
                    }
                    XCTAssertEqual(p.acc, s.acc, "\(name) doc \(p.docId): acc packed vs alone")
                }
                XCTAssertEqual(full.samples.count, single.samples.count, name)
            } else {
                unpacked[name] = full
            }

            var saved: [DocResult] = []
            XCTAssertThrowsError(try evaluate(task: task, docs: docs, scorer: scorer, onDoc: { sample in
                if saved.count == 4 { throw Interrupt() }
                saved.append(sample)
            }), name) { XCTAssertTrue($0 is Interrupt, "\($0)") }
            let restored = try saved.map { try JSONDecoder().decode(DocResult.self, from: JSONEncoder().encode($0)) }
            XCTAssertEqual(restored, Array(full.samples.prefix(4)), "\(name): the JSON round trip is exact")

            var progress: [Int] = []
            reported = []
            let resumed = try evaluate(task: task, docs: docs, scorer: scorer, done: restored,
                                       progress: { n, total, _ in progress.append(n); XCTAssertEqual(total, 10) },
                                       onDoc: { reported.append($0.docId) })
            XCTAssertEqual(reported, Array(4..<10), "\(name): only the missing docs are scored")
            XCTAssertEqual(progress, Array(5...10), "\(name): progress counts the resumed docs")
            XCTAssertEqual(resumed.samples.map(\.loglikelihoods), full.samples.map(\.loglikelihoods), name)
            XCTAssertEqual(resumed.samples, full.samples, name)
            for (metric, a, b) in [("acc", resumed.acc, full.acc), ("acc_norm", resumed.accNorm, full.accNorm),
                                   ("perplexity", resumed.perplexity, full.perplexity)] {
                XCTAssertEqual(a?.value, b?.value, "\(name) \(metric)")
                XCTAssertEqual(a?.stderr, b?.stderr, "\(name) \(metric) stderr")
            }
            XCTAssertEqual(resumed.docs, 10)
            XCTAssertEqual(resumed.requests, full.requests)
            XCTAssertEqual(resumed.truncatedRequests, full.truncatedRequests)
            print("\(name): resumed after 4 of 10 docs: log-likelihoods of \(resumed.requests) requests identical; acc "
                  + "\(resumed.acc.value), acc_norm \(resumed.accNorm?.value ?? .nan), perplexity \(resumed.perplexity?.value ?? .nan) as uninterrupted")

            // A finished task is not scored again.
            let again = try evaluate(task: task, docs: docs, scorer: scorer, done: full.samples,
                                     onDoc: { _ in XCTFail("\(name): a finished doc was scored again") })
            XCTAssertEqual(again.samples, full.samples)
        }
    }

    /// Saved results that are not the first docs of this run (another --limit or data file) are refused.
    func testDoneMustBeTheFirstDocs() throws {
        let scorer = try Self.scorer.get()
        let task = try ZeroShotTask.named("arc_easy")
        let docs = try task.docs(dataDir: packageRoot + "/data", limit: 3)
        let full = try evaluate(task: task, docs: docs, scorer: scorer)
        XCTAssertThrowsError(try evaluate(task: task, docs: docs, scorer: scorer, done: Array(full.samples[1...]))) {
            XCTAssertTrue("\($0)".contains("doc 1"), "\($0)")
        }
        XCTAssertThrowsError(try evaluate(task: task, docs: Array(docs.prefix(2)), scorer: scorer, done: full.samples)) {
            XCTAssertTrue("\($0)".contains("3 finished docs"), "\($0)")
        }
    }
}
