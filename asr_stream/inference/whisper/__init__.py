"""inference/whisper"""
