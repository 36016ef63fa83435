using Microsoft.Extensions.Logging;

namespace HighlanderPG.Diagnostics;

/// <summary>
/// A rehearsal's logger (<see cref="Hosting.HighlanderNode.RehearseAsync"/>): it formats every message, as an enabled
/// logger would (so that code runs too), and writes none.
/// </summary>
internal sealed class FormattingOnlyLogger : ILogger
{
    public static readonly FormattingOnlyLogger Instance = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        ArgumentNullException.ThrowIfNull(formatter);
        _ = formatter(state, exception);
    }
}
