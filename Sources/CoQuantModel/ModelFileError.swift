/// The one error a loader throws for bad input: which file, and what is wrong with it.
/// The CLI prints `description` and exits non-zero.
public struct ModelFileError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let problem: String

    public init(_ file: String, _ problem: String) {
        self.file = file
        self.problem = problem
    }

    public var description: String { "\(file): \(problem)" }
}
