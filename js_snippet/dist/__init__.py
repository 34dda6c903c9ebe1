"""The prebuilt tag bundle (tag.js, banner.js, banner.css, debug.js), served by the collector."""
