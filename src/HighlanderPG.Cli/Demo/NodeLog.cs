using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Demo;

/// <summary>One message of a node, read from its <c>--log-format json</c> line.</summary>
internal sealed record NodeLogEntry(int EventId, string Level, string Category, string Message, JsonElement State);

/// <summary>
/// Reads the nodes' logs: each line a JSON object (<c>--log-format json</c>), recognised by its event id
/// (<see cref="HighlanderEventIds"/>), never by its text. The events worth telling are shown in the view, one line each.
/// </summary>
internal sealed partial class NodeLog(DemoView view)
{
    /// <summary>What the demo tells about a node: losing and taking the lock, the lock-delay, stopping and killing children, escalation.</summary>
    internal static readonly HashSet<int> ShownEvents =
    [
        HighlanderEventIds.SessionLost,
        HighlanderEventIds.LockDelay,
        HighlanderEventIds.LeaseExpiring,
        HighlanderEventIds.Acquired,
        HighlanderEventIds.Released,
        HighlanderEventIds.LeadershipLost,
        HighlanderEventIds.Escalating,
        HighlanderEventIds.CrashLoop,
        HighlanderEventIds.RunnerError,
        HighlanderEventIds.CommandStopping,
        HighlanderEventIds.CommandKilled,
        HighlanderEventIds.CommandLeftovers,
        HighlanderEventIds.CommandEscalated,
    ];

    /// <summary>A line a node wrote on standard output or error.</summary>
    public void OnLine(DemoNode node, string line)
    {
        if (Parse(line) is not { } entry)
        {
            // Not a log line: the CLI's own messages ("highlander run: ..."), or the command's output.
            if (line.StartsWith("highlander", StringComparison.Ordinal))
            {
                view.Event($"{node.Id}: {line}", "red");
            }

            return;
        }

        if (ShownEvents.Contains(entry.EventId) || entry.Level == "critical")
        {
            view.Event($"{node.Id}: {Shorten(entry.Message)}", entry.Level switch { "warning" => "yellow", "error" or "critical" => "red", _ => "" });
        }
    }

    /// <summary>A <c>--log-format json</c> line, or null if the line is not one.</summary>
    internal static NodeLogEntry? Parse(string line)
    {
        if (!line.StartsWith('{'))
        {
            return null;
        }

        try
        {
            using var document = JsonDocument.Parse(line);
            var root = document.RootElement;
            return root.TryGetProperty("eventId", out var id) && id.TryGetInt32(out var eventId)
                && root.TryGetProperty("level", out var level) && root.TryGetProperty("message", out var message)
                ? new NodeLogEntry(
                    eventId,
                    level.GetString() ?? "",
                    root.TryGetProperty("category", out var category) ? category.GetString() ?? "" : "",
                    message.GetString() ?? "",
                    root.TryGetProperty("state", out var state) ? state.Clone() : default)
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>A node's log message, made to fit one line of the view: no keys, short durations, no explanations.</summary>
    internal static string Shorten(string message)
    {
        message = LockKey().Replace(message, "");
        message = Duration().Replace(message, m =>
        {
            var time = TimeSpan.Parse(m.Value, CultureInfo.InvariantCulture);
            return time < TimeSpan.FromSeconds(1) ? DemoText.Ms(time) : time.TotalSeconds.ToString("0.00", CultureInfo.InvariantCulture) + " s";
        });
        foreach (var cut in new[] { ". Every singleton", " so that holders", " before the server may" })
        {
            var at = message.IndexOf(cut, StringComparison.Ordinal);
            if (at > 0)
            {
                message = message[..at];
            }
        }

        return message;
    }

    [GeneratedRegex(@" \(key -?\d+\)")]
    private static partial Regex LockKey();

    [GeneratedRegex(@"\b\d{2}:\d{2}:\d{2}(\.\d+)?\b")]
    private static partial Regex Duration();
}

/// <summary>How the demo writes times.</summary>
internal static class DemoText
{
    public static string Ms(TimeSpan time) => time.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms";
}
