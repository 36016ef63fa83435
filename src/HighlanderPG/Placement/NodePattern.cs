namespace HighlanderPG.Placement;

/// <summary>
/// A node-id pattern of <see cref="ClusterSingletonOptions.PreferredNodes"/>: a node id, where <c>*</c> stands for any
/// run of characters (none included). Node ids with a common prefix or suffix work as tags: <c>eu-*</c>, <c>*-gpu</c>.
/// </summary>
internal static class NodePattern
{
    /// <summary>What is wrong with <paramref name="pattern"/>, or <see langword="null"/> when it is valid.</summary>
    public static string? Problem(string? pattern, int maxNodeIdLength)
    {
        if (string.IsNullOrEmpty(pattern))
        {
            return "a pattern must not be empty";
        }

        if (pattern.Any(c => c is <= ' ' or >= (char)127))
        {
            return $"'{pattern}' must be printable ASCII without spaces (node ids are)";
        }

        if (pattern.Replace("*", string.Empty, StringComparison.Ordinal).Length > maxNodeIdLength)
        {
            return $"'{pattern}' can match no node id: node ids are at most {maxNodeIdLength} characters";
        }

        if (pattern.Contains("**", StringComparison.Ordinal))
        {
            return $"'{pattern}' has '**': write one '*' (it matches any run of characters)";
        }

        if (pattern.IndexOfAny(['?', '[', ']']) >= 0)
        {
            return $"'{pattern}' has '?', '[' or ']': only '*' is a wildcard (any run of characters)";
        }

        return null;
    }

    /// <summary>Whether <paramref name="nodeId"/> matches <paramref name="pattern"/> (ordinal; <c>*</c> matches any run).</summary>
    public static bool Matches(string pattern, string nodeId)
    {
        var parts = pattern.Split('*');
        if (parts.Length == 1)
        {
            return string.Equals(pattern, nodeId, StringComparison.Ordinal);
        }

        if (!nodeId.StartsWith(parts[0], StringComparison.Ordinal) || !nodeId.EndsWith(parts[^1], StringComparison.Ordinal)
            || nodeId.Length < parts[0].Length + parts[^1].Length)
        {
            return false;
        }

        var at = parts[0].Length;
        var end = nodeId.Length - parts[^1].Length;
        for (var i = 1; i < parts.Length - 1; i++)
        {
            var found = nodeId.IndexOf(parts[i], at, end - at, StringComparison.Ordinal);
            if (found < 0)
            {
                return false;
            }

            at = found + parts[i].Length;
        }

        return true;
    }

    /// <summary>Whether <paramref name="nodeId"/> matches any of <paramref name="patterns"/>.</summary>
    public static bool MatchesAny(IReadOnlyList<string> patterns, string? nodeId) =>
        nodeId is not null && patterns.Any(p => Matches(p, nodeId));
}
