using System.Globalization;
using System.Text;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.Cli.Diagnostics;

/// <summary>
/// One line per message on standard error (standard output belongs to the command):
/// <c>HH:mm:ss.fff level category[event id] message</c>. The demo parses these lines, so keep the format.
/// Exceptions are shown by their message; with <c>--log-level debug</c> or <c>trace</c>, in full.
/// </summary>
internal sealed class CliLoggerProvider(TextWriter writer, bool fullExceptions) : ILoggerProvider
{
    private readonly Lock _gate = new();

    public ILogger CreateLogger(string categoryName) => new CliLogger(this, categoryName);

    public void Dispose()
    {
    }

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

    private void Write(string category, LogLevel level, EventId eventId, string message, Exception? exception)
    {
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

            provider.Write(category, logLevel, eventId, formatter(state, exception), exception);
        }
    }
}
