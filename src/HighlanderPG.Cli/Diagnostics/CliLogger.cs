using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Diagnostics;

/// <summary>How <c>highlander run</c> writes its log (<c>--log-format</c>).</summary>
internal enum LogFormat
{
    /// <summary>For people: <c>HH:mm:ss.fff level category[event id] message</c>.</summary>
    Text,

    /// <summary>For programs: one JSON object per line, with the event id and the message's parameters (docs/cli.md).</summary>
    Json,
}

/// <summary>
/// One line per message on standard error (standard output belongs to the command). As text:
/// <c>HH:mm:ss.fff level category[event id] message</c>. As JSON: one object per line with <c>timestamp</c> (UTC, ISO
/// 8601), <c>level</c>, <c>category</c>, <c>eventId</c>, <c>eventName</c>, <c>message</c>, <c>state</c> (the message's
/// parameters by name) and <c>exception</c>; programs (the demo) read this one and match <c>eventId</c> against
/// <see cref="HighlanderPG.Diagnostics.HighlanderEventIds"/>. Exceptions are shown by their message; with
/// <c>--log-level debug</c> or <c>trace</c>, in full.
/// </summary>
internal sealed class CliLoggerProvider(TextWriter writer, bool fullExceptions, LogFormat format = LogFormat.Text) : ILoggerProvider
{
    private static readonly JsonWriterOptions JsonOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    private readonly Lock _gate = new();

    public ILogger CreateLogger(string categoryName) => new CliLogger(this, categoryName);

    public void Dispose()
    {
    }

    /// <summary>The level as <c>--log-level</c> spells it (the JSON format's <c>level</c>).</summary>
    internal static string LevelWord(LogLevel level) => level switch
    {
        LogLevel.Trace => "trace",
        LogLevel.Debug => "debug",
        LogLevel.Information => "information",
        LogLevel.Warning => "warning",
        LogLevel.Error => "error",
        LogLevel.Critical => "critical",
        _ => "none",
    };

    internal static string LevelName(LogLevel level) => level switch
    {
        LogLevel.Trace => "trce",
        LogLevel.Debug => "dbug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "fail",
        LogLevel.Critical => "crit",
        _ => "none",
    };

    /// <summary>One JSON object, one line: what <c>--log-format json</c> writes.</summary>
    internal static string JsonLine(DateTimeOffset timestamp, string category, LogLevel level, EventId eventId, string message, object? state, string? exception)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, JsonOptions))
        {
            json.WriteStartObject();
            json.WriteString("timestamp", timestamp.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'Z'", CultureInfo.InvariantCulture));
            json.WriteString("level", LevelWord(level));
            json.WriteString("category", category);
            json.WriteNumber("eventId", eventId.Id);
            if (!string.IsNullOrEmpty(eventId.Name))
            {
                json.WriteString("eventName", eventId.Name);
            }

            json.WriteString("message", message);
            json.WriteStartObject("state");
            if (state is IEnumerable<KeyValuePair<string, object?>> parameters)
            {
                foreach (var (key, value) in parameters)
                {
                    if (key != "{OriginalFormat}")
                    {
                        json.WritePropertyName(key);
                        WriteValue(json, value);
                    }
                }
            }

            json.WriteEndObject();
            if (exception is not null)
            {
                json.WriteString("exception", exception);
            }

            json.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    private static void WriteValue(Utf8JsonWriter json, object? value)
    {
        switch (value)
        {
            case null:
                json.WriteNullValue();
                break;
            case bool b:
                json.WriteBooleanValue(b);
                break;
            case int or long or short or byte or sbyte or ushort or uint:
                json.WriteNumberValue(Convert.ToInt64(value, CultureInfo.InvariantCulture));
                break;
            case ulong u:
                json.WriteNumberValue(u);
                break;
            case double d when double.IsFinite(d):
                json.WriteNumberValue(d);
                break;
            case float f when float.IsFinite(f):
                json.WriteNumberValue(f);
                break;
            case decimal m:
                json.WriteNumberValue(m);
                break;
            case string text:
                json.WriteStringValue(text);
                break;
            case IEnumerable items:
                json.WriteStartArray();
                foreach (var item in items)
                {
                    WriteValue(json, item);
                }

                json.WriteEndArray();
                break;
            default:
                json.WriteStringValue(value is IFormattable formattable ? formattable.ToString(null, CultureInfo.InvariantCulture) : value.ToString());
                break;
        }
    }

    private void Write(string category, LogLevel level, EventId eventId, string message, object? state, Exception? exception)
    {
        if (format == LogFormat.Json)
        {
            var json = JsonLine(DateTimeOffset.UtcNow, category, level, eventId, message, state, exception is null ? null : fullExceptions ? exception.ToString() : Flatten(exception));
            lock (_gate)
            {
                writer.WriteLine(json);
                writer.Flush();
            }

            return;
        }

        var line = new StringBuilder()
            .Append(DateTime.Now.ToString("HH:mm:ss.fff", CultureInfo.InvariantCulture)).Append(' ')
            .Append(LevelName(level)).Append(' ')
            .Append(category).Append('[').Append(eventId.Id.ToString(CultureInfo.InvariantCulture)).Append("] ")
            .Append(message);
        if (exception is not null)
        {
            line.Append(": ").Append(fullExceptions ? exception.ToString() : Flatten(exception));
        }

        lock (_gate)
        {
            writer.WriteLine(line.ToString());
            writer.Flush();
        }
    }

    private static string Flatten(Exception exception)
    {
        var parts = new List<string>();
        for (var e = exception; e is not null && parts.Count < 3; e = e.InnerException)
        {
            if (parts.Count == 0 || !parts[^1].Contains(e.Message, StringComparison.Ordinal))
            {
                parts.Add(e.Message);
            }
        }

        return string.Join(" -> ", parts).ReplaceLineEndings(" ");
    }

    private sealed class CliLogger(CliLoggerProvider provider, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel))
            {
                return;
            }

            provider.Write(category, logLevel, eventId, formatter(state, exception), state, exception);
        }
    }
}
