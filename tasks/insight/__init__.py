"""Analytics for people: tags, segments, journeys, service scores, text, product alerts, the KPI report."""
