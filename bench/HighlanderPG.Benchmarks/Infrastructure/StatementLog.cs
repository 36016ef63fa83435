using System.Text.RegularExpressions;
using Npgsql;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// Counts the statements each session runs, per <c>application_name</c>, from the server's own log: for a window,
/// <c>log_statement = all</c> is switched on (<c>ALTER SYSTEM</c> + <c>pg_reload_conf()</c>, so superuser), the
/// benchmark logs a start and an end marker statement, and every <c>LOG:  statement:</c> / <c>LOG:  execute</c> line
/// between them is counted for its session's application name (the server's <c>log_line_prefix</c> is
/// <see cref="LinePrefix"/>, set when the throwaway server is created). One line is one simple query or one Execute
/// message of the extended protocol (what Npgsql sends: one per statement of a batch). <c>ERROR:</c> lines are counted
/// the same way. Only for the throwaway server, whose log file the benchmark can read.
/// </summary>
internal sealed partial class StatementLog(string logFile, string connectionString)
{
    /// <summary>The <c>log_line_prefix</c> the throwaway server is created with.</summary>
    public const string LinePrefix = "bench|%p|%a|";

    public async Task SetLoggingAsync(bool on, CancellationToken cancellationToken)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync(cancellationToken);
        var sql = on
            ? "ALTER SYSTEM SET log_statement = 'all'; ALTER SYSTEM SET log_parameter_max_length = 0; SELECT pg_catalog.pg_reload_conf()"
            : "ALTER SYSTEM RESET log_statement; ALTER SYSTEM RESET log_parameter_max_length; SELECT pg_catalog.pg_reload_conf()";
        await using var cmd = new NpgsqlCommand(sql, connection);
        await cmd.ExecuteNonQueryAsync(cancellationToken);
    }

    /// <summary>Logs a marker statement (a constant made of hex digits) and returns it.</summary>
    public async Task<string> MarkAsync(CancellationToken cancellationToken)
    {
        var marker = "bench_marker_" + Guid.NewGuid().ToString("N");
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false, ApplicationName = "bench-marker" }.ConnectionString);
        await connection.OpenAsync(cancellationToken);
        await using var cmd = new NpgsqlCommand($"SELECT '{marker}'", connection);
        await cmd.ExecuteNonQueryAsync(cancellationToken);
        return marker;
    }

    /// <summary>Statement and error lines per application name between the two markers.</summary>
    public async Task<IReadOnlyDictionary<string, (int Statements, int Errors)>> CountAsync(string startMarker, string endMarker, CancellationToken cancellationToken) =>
        (await ReadAsync(startMarker, endMarker, cancellationToken)).Counts;

    /// <summary>
    /// Statement and error lines per application name between the two markers, and how often each statement text
    /// (its first 120 characters, whitespace collapsed) ran per application name.
    /// </summary>
    public async Task<(IReadOnlyDictionary<string, (int Statements, int Errors)> Counts, IReadOnlyDictionary<string, Dictionary<string, int>> Texts)> ReadAsync(
        string startMarker, string endMarker, CancellationToken cancellationToken)
    {
        var counts = new Dictionary<string, (int Statements, int Errors)>(StringComparer.Ordinal);
        var texts = new Dictionary<string, Dictionary<string, int>>(StringComparer.Ordinal);
        var inside = false;
        await using var stream = new FileStream(logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        while (await reader.ReadLineAsync(cancellationToken) is { } line)
        {
            if (!inside)
            {
                inside = line.Contains(startMarker, StringComparison.Ordinal) && line.Contains("LOG:", StringComparison.Ordinal);
                continue;
            }

            if (line.Contains(endMarker, StringComparison.Ordinal))
            {
                break;
            }

            var match = Line().Match(line);
            if (!match.Success)
            {
                continue;
            }

            var application = match.Groups["app"].Value;
            var (statements, errors) = counts.GetValueOrDefault(application);
            if (match.Groups["level"].Value == "ERROR")
            {
                errors++;
            }
            else if (match.Groups["rest"].Value.StartsWith("statement:", StringComparison.Ordinal) || match.Groups["rest"].Value.StartsWith("execute ", StringComparison.Ordinal))
            {
                statements++;
                var rest = match.Groups["rest"].Value;
                var text = Spaces().Replace(rest[(rest.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim(), " ");
                text = text.Length > 120 ? text[..120] + "..." : text;
                if (!texts.TryGetValue(application, out var byText))
                {
                    texts[application] = byText = new Dictionary<string, int>(StringComparer.Ordinal);
                }

                byText[text] = byText.GetValueOrDefault(text) + 1;
            }

            counts[application] = (statements, errors);
        }

        return (counts, texts);
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Spaces();

    [GeneratedRegex(@"^bench\|\d+\|(?<app>[^|]*)\|(?<level>[A-Z]+):\s+(?<rest>.*)$")]
    private static partial Regex Line();
}
