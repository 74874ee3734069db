import QSModel

/// Merges a batch's operations so that later writes to a key win: the result applied in
/// one transaction leaves the same state as applying every operation in order, with each
/// key written at most once (a clear keeps its place and removes earlier writes it covers).
public func coalesce(_ operations: [Mutation]) -> [Mutation] {
    var decided = Set<[UInt8]>()
    var clearedPrefixes = [[UInt8]]()
    var kept = [Mutation]()
    kept.reserveCapacity(operations.count)
    func coveredByLaterClear(_ key: [UInt8]) -> Bool {
        clearedPrefixes.contains { key.starts(with: $0) }
    }
    for op in operations.reversed() {
        switch op {
        case let .set(key, _, _), let .delete(key):
            if decided.contains(key) || coveredByLaterClear(key) { continue }
            decided.insert(key)
            kept.append(op)
        case let .clearPrefix(prefix):
            if clearedPrefixes.contains(where: { prefix.starts(with: $0) }) { continue }
            clearedPrefixes.append(prefix)
            kept.append(op)
        }
    }
    return kept.reversed()
}
