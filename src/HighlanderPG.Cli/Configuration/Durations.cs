using System.Globalization;
using System.Text;

namespace HighlanderPG.Cli.Configuration;

/// <summary>
/// Strict parser for durations on the command line: whole numbers with a unit, largest unit first, each unit at most
/// once: <c>500ms</c>, <c>4s</c>, <c>2m</c>, <c>1h</c>, <c>1m30s</c>. No bare numbers (is <c>5</c> seconds or minutes?),
/// no fractions, no signs, no spaces.
/// </summary>
internal static class Durations
{
    private static readonly (string Unit, long Ticks)[] Units =
    [
        ("h", TimeSpan.TicksPerHour),
        ("m", TimeSpan.TicksPerMinute),
        ("s", TimeSpan.TicksPerSecond),
        ("ms", TimeSpan.TicksPerMillisecond),
    ];

    /// <summary>Parses <paramref name="text"/>; on failure <paramref name="error"/> says why, quoting the input.</summary>
    public static bool TryParse(string? text, out TimeSpan value, out string error)
    {
        value = TimeSpan.Zero;
        error = "";
        if (string.IsNullOrEmpty(text))
        {
            error = "a duration is required, e.g. 500ms, 4s, 2m, 1h or 1m30s";
            return false;
        }

        var position = 0;
        var lastUnit = -1;
        long total = 0;
        while (position < text.Length)
        {
            var start = position;
            while (position < text.Length && char.IsAsciiDigit(text[position]))
            {
                position++;
            }

            if (position == start)
            {
                error = $"'{text}' is not a duration: expected a whole number at '{text[start..]}' (use e.g. 500ms, 4s, 2m, 1h or 1m30s)";
                return false;
            }

            var digits = text[start..position];
            var unitStart = position;
            while (position < text.Length && char.IsAsciiLetterLower(text[position]))
            {
                position++;
            }

            var unit = text[unitStart..position];
            if (unit.Length == 0)
            {
                error = position >= text.Length
                    ? $"'{text}' is not a duration: '{digits}' has no unit (add ms, s, m or h, e.g. {digits}s)"
                    : $"'{text}' is not a duration: unexpected '{text[position]}' ({text[position] switch
                    {
                        '.' or ',' => "whole numbers only; write 1500ms, not 1.5s",
                        var c when char.IsWhiteSpace(c) => $"no spaces; write {digits}s",
                        var c when char.IsAsciiLetterUpper(c) => "units are lowercase: ms, s, m, h",
                        _ => "use e.g. 500ms, 4s, 2m, 1h or 1m30s",
                    }})";
                return false;
            }

            var index = Array.FindIndex(Units, u => u.Unit == unit);
            if (index < 0)
            {
                error = $"'{text}' is not a duration: unknown unit '{unit}' (use ms, s, m or h)";
                return false;
            }

            if (index <= lastUnit)
            {
                error = $"'{text}' is not a duration: units must go from largest to smallest, each at most once (e.g. 1m30s)";
                return false;
            }

            lastUnit = index;
            if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
            {
                error = $"'{text}' is too long a duration";
                return false;
            }

            try
            {
                total = checked(total + checked(number * Units[index].Ticks));
            }
            catch (OverflowException)
            {
                error = $"'{text}' is too long a duration";
                return false;
            }
        }

        value = TimeSpan.FromTicks(total);
        return true;
    }

    /// <summary>Formats a duration the way it is written on the command line (<c>1m30s</c>, <c>500ms</c>, <c>0s</c>).</summary>
    public static string Format(TimeSpan value)
    {
        if (value <= TimeSpan.Zero)
        {
            return "0s";
        }

        var builder = new StringBuilder();
        var ticks = value.Ticks;
        foreach (var (unit, size) in Units)
        {
            var count = ticks / size;
            if (count > 0)
            {
                builder.Append(count.ToString(CultureInfo.InvariantCulture)).Append(unit);
                ticks -= count * size;
            }
        }

        return builder.Length == 0 ? "0s" : builder.ToString();
    }
}
